"""Model files read from their first bytes: GGUF headers, broken and legacy files, folders."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from lokal.formats.modelfile import ModelFileError, check_magic, inspect, is_cross_encoder, read_gguf
from tests.conftest import smollm_gguf


@pytest.fixture(scope="module")
def smollm_bytes() -> bytes:
    return smollm_gguf().read_bytes()


def _metadata_end(data: bytes) -> int:
    pos = 4 + 4 + 8
    (kv_count,) = struct.unpack_from("<Q", data, pos)
    pos += 8
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def string(p: int) -> int:
        (n,) = struct.unpack_from("<Q", data, p)
        return p + 8 + n

    def value(p: int, kind: int) -> int:
        if kind in sizes:
            return p + sizes[kind]
        if kind == 8:
            return string(p)
        assert kind == 9
        item, count = struct.unpack_from("<IQ", data, p)
        p += 12
        for _ in range(count):
            p = value(p, item)
        return p

    for _ in range(kv_count):
        pos = string(pos)
        (kind,) = struct.unpack_from("<I", data, pos)
        pos = value(pos + 4, kind)
    return pos


def test_read_real_smollm2() -> None:
    info = read_gguf(smollm_gguf())
    assert info.version == 3
    assert info.tensor_count == 272
    assert info.architecture == "llama"
    assert info.context_length == 8192
    assert info.has_chat_template is True
    assert info.is_encoder is False
    assert info.pooling_type is None
    assert info.arch_value("embedding_length") == 576
    assert info.metadata["tokenizer.ggml.model"] == "gpt2"
    assert "<|im_start|>" in info.metadata["tokenizer.chat_template"]
    # Big arrays (the vocabulary) are skipped, not kept.
    assert info.metadata["tokenizer.ggml.tokens"] is None


def test_inspect_real_gguf() -> None:
    model = inspect(smollm_gguf())
    assert model.kind == "gguf"
    assert model.gguf is not None and model.gguf.architecture == "llama"
    assert model.hf_config is None


@pytest.mark.parametrize("cut", [5, 12, 24, 200, 4096, 1_000_000, -1])
def test_truncated_inside_the_header(tmp_path: Path, smollm_bytes: bytes, cut: int) -> None:
    end = _metadata_end(smollm_bytes)
    size = end + cut if cut < 0 else cut
    assert size < end
    path = tmp_path / "cut.gguf"
    path.write_bytes(smollm_bytes[:size])
    with pytest.raises(ModelFileError, match=r"truncated") as info:
        read_gguf(path)
    assert str(info.value).startswith("cut.gguf: ")
    assert "GGUF header" in str(info.value)
    with pytest.raises(ModelFileError, match="truncated"):
        inspect(path)


def test_whole_header_without_tensor_data_still_reads(tmp_path: Path, smollm_bytes: bytes) -> None:
    # The header is all read_gguf checks; missing tensor data is the engine's to report.
    path = tmp_path / "headonly.gguf"
    path.write_bytes(smollm_bytes[:_metadata_end(smollm_bytes)])
    assert read_gguf(path).architecture == "llama"


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "zero.gguf"
    path.write_bytes(b"")
    with pytest.raises(ModelFileError, match=r"zero\.gguf is empty \(0 bytes\)"):
        read_gguf(path)
    with pytest.raises(ModelFileError, match="empty"):
        inspect(path)


@pytest.mark.parametrize("magic,kind", [(b"lmgg", "GGML (unversioned)"), (b"tjgg", "GGJT"),
                                        (b"fmgg", "GGMF"), (b"ggjt", "GGJT"), (b"algg", "GGLA")])
def test_legacy_magics(tmp_path: Path, magic: bytes, kind: str) -> None:
    path = tmp_path / "old.bin"
    path.write_bytes(magic + b"\x01\x00\x00\x00" + os.urandom(256))
    with pytest.raises(ModelFileError) as info:
        read_gguf(path)
    message = str(info.value)
    assert message.startswith("old.bin is a legacy ")
    assert kind in message
    assert "GGUF" in message and "convert" in message


def test_random_bytes_are_not_gguf(tmp_path: Path) -> None:
    path = tmp_path / "random.gguf"
    data = b"\x89PNG" + os.urandom(4096)
    path.write_bytes(data)
    with pytest.raises(ModelFileError, match="not a GGUF") as info:
        read_gguf(path)
    assert repr(b"\x89PNG") in str(info.value)


def test_short_non_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    path.write_bytes(b"GG")
    with pytest.raises(ModelFileError, match="not a GGUF"):
        read_gguf(path)


def test_unsupported_version(tmp_path: Path, smollm_bytes: bytes) -> None:
    path = tmp_path / "v9.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<I", 9) + smollm_bytes[8:4096])
    with pytest.raises(ModelFileError, match="unsupported GGUF version 9"):
        read_gguf(path)


def test_corrupt_kv_count(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1, 1 << 40) + b"\0" * 64)
    with pytest.raises(ModelFileError, match="corrupt"):
        read_gguf(path)


def test_implausible_string_length(tmp_path: Path) -> None:
    path = tmp_path / "longstr.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 1 << 40) + b"\0" * 64)
    with pytest.raises(ModelFileError, match="implausibly long string"):
        read_gguf(path)


def test_unknown_value_type(tmp_path: Path) -> None:
    key = b"general.architecture"
    path = tmp_path / "kind.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key
                     + struct.pack("<I", 77) + b"\0" * 16)
    with pytest.raises(ModelFileError, match="unknown value type 77"):
        read_gguf(path)


def test_minimal_handmade_gguf(tmp_path: Path) -> None:
    def kv_string(key: str, value: str) -> bytes:
        k, v = key.encode(), value.encode()
        return struct.pack("<Q", len(k)) + k + struct.pack("<I", 8) + struct.pack("<Q", len(v)) + v

    def kv_u32(key: str, value: int) -> bytes:
        k = key.encode()
        return struct.pack("<Q", len(k)) + k + struct.pack("<I", 4) + struct.pack("<I", value)

    path = tmp_path / "bert.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 3) + kv_string("general.architecture", "bert")
                     + kv_u32("bert.context_length", 512) + kv_u32("bert.pooling_type", 2))
    info = read_gguf(path)
    assert info.architecture == "bert"
    assert info.is_encoder is True
    assert info.context_length == 512
    assert info.pooling_type == 2
    assert info.has_chat_template is False


def test_check_magic_accepts_gguf(tmp_path: Path) -> None:
    check_magic(tmp_path / "x.gguf", b"GGUF", 10)  # no exception
    with pytest.raises(ModelFileError, match="empty"):
        check_magic(tmp_path / "x.gguf", b"", 0)


def test_inspect_hf_folder(tmp_path: Path) -> None:
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "hidden_size": 384}))
    model = inspect(folder)
    assert model.kind == "hf"
    assert model.gguf is None
    assert model.hf_config == {"architectures": ["BertModel"], "hidden_size": 384}
    assert not is_cross_encoder(model.hf_config)


def test_inspect_cross_encoder_folder(tmp_path: Path) -> None:
    folder = tmp_path / "reranker"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["XLMRobertaForSequenceClassification"]}))
    model = inspect(folder)
    assert model.kind == "hf" and is_cross_encoder(model.hf_config)


def test_inspect_folder_with_only_modules_json(tmp_path: Path) -> None:
    folder = tmp_path / "st"
    folder.mkdir()
    (folder / "modules.json").write_text("[]")
    model = inspect(folder)
    assert model.kind == "hf" and model.hf_config == {}


def test_inspect_folder_with_broken_config_json(tmp_path: Path) -> None:
    folder = tmp_path / "st"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    model = inspect(folder)
    assert model.kind == "hf" and model.hf_config == {}


def test_inspect_whisper_ct2_folder(tmp_path: Path) -> None:
    folder = tmp_path / "whisper"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"alignment_heads": [[1, 2]]}))
    (folder / "model.bin").write_bytes(b"\0")
    assert inspect(folder).kind == "whisper-ct2"


def test_inspect_folder_that_is_not_a_model(tmp_path: Path) -> None:
    folder = tmp_path / "random"
    folder.mkdir()
    (folder / "README.md").write_text("hi")
    with pytest.raises(ModelFileError, match="not a Hugging Face model"):
        inspect(folder)


def test_inspect_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match=r"model file gone\.gguf does not exist"):
        inspect(tmp_path / "gone.gguf")


def test_unreadable_path(tmp_path: Path) -> None:
    folder = tmp_path / "dir.gguf"
    folder.mkdir()
    with pytest.raises(ModelFileError, match=r"cannot read dir\.gguf: Is a directory"):
        read_gguf(folder)
