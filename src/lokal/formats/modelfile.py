"""What a model file is, read from its first bytes: GGUF metadata, legacy GGML, folders.

Reading the header ourselves lets lokal refuse broken files with a clear reason
before an engine sees them, and pick an engine without loading anything.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

GGUF_MAGIC = b"GGUF"
# Pre-GGUF llama.cpp / ggml formats (2023): uint32 magics, little-endian on disk.
LEGACY_MAGICS = {
    b"lmgg": "GGML (unversioned)",
    b"fmgg": "GGMF",
    b"tjgg": "GGJT",
    b"algg": "GGLA",
    b"nsgg": "GGSN",
    b"ggml": "GGML (unversioned)",
    b"ggmf": "GGMF",
    b"ggjt": "GGJT",
}

# Metadata values larger than this are skipped, not kept (token lists, merges).
_MAX_KEPT_ARRAY = 64
_MAX_STRING = 1 << 24


class ModelFileError(ValueError):
    """A model file that cannot be served, with a reason meant for the user."""


@dataclass
class GGUFInfo:
    """The parts of a GGUF header lokal needs."""

    version: int
    tensor_count: int
    metadata: dict[str, Any] = field(default_factory=dict)
    #: lengths of the arrays too long to keep (their value in metadata is None)
    array_lengths: dict[str, int] = field(default_factory=dict)

    @property
    def vocabulary(self) -> tuple[Any, ...]:
        """What two models must share for one to draft tokens for the other: the
        tokenizer's kind and pre-tokenizer, the number of tokens and the special ids."""
        m = self.metadata
        return (m.get("tokenizer.ggml.model"), m.get("tokenizer.ggml.pre"),
                self.array_lengths.get("tokenizer.ggml.tokens", len(m.get("tokenizer.ggml.tokens") or ())),
                m.get("tokenizer.ggml.bos_token_id"), m.get("tokenizer.ggml.eos_token_id"))

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def arch_value(self, key: str) -> Any:
        return self.metadata.get(f"{self.architecture}.{key}")

    @property
    def context_length(self) -> int | None:
        value = self.arch_value("context_length")
        return int(value) if isinstance(value, int) else None

    @property
    def pooling_type(self) -> int | None:
        """llama.cpp pooling: 0 none, 1 mean, 2 cls, 3 last, 4 rank."""
        value = self.arch_value("pooling_type")
        return int(value) if isinstance(value, int) else None

    @property
    def classifier_labels(self) -> list[str] | None:
        """Output labels of a sequence-classification head (cross-encoder rerankers)."""
        value = self.arch_value("classifier.output_labels")
        return [str(v) for v in value] if isinstance(value, list) else None

    @property
    def is_reranker(self) -> bool:
        """Scores (query, document) pairs: rank pooling declared (Qwen3 rerankers), or an
        encoder with a one-output classification head (bge-reranker, ms-marco
        cross-encoders), which llama.cpp runs with rank pooling as `--reranking` does."""
        if self.pooling_type == 4:
            return True
        labels = self.classifier_labels
        return self.is_encoder and labels is not None and len(labels) == 1

    @property
    def has_chat_template(self) -> bool:
        return isinstance(self.metadata.get("tokenizer.chat_template"), str)

    @property
    def is_encoder(self) -> bool:
        """BERT-style models that only embed; building a chat engine for them aborts."""
        return self.architecture in {
            "bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3",
            "neo-bert", "modern-bert", "t5encoder", "eurobert",
        }


_SCALARS = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
    10: "<Q", 11: "<q", 12: "<d",
}


def _read(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise ModelFileError("the file ends inside its GGUF header (truncated download?)")
    return data


def _unpack(stream: BinaryIO, fmt: str) -> Any:
    return struct.unpack(fmt, _read(stream, struct.calcsize(fmt)))[0]


def _read_string(stream: BinaryIO) -> str:
    length = _unpack(stream, "<Q")
    if length > _MAX_STRING:
        raise ModelFileError("the GGUF header holds an implausibly long string (corrupt file?)")
    return _read(stream, length).decode("utf-8", errors="replace")


def _read_value(stream: BinaryIO, kind: int) -> Any:
    if kind in _SCALARS:
        return _unpack(stream, _SCALARS[kind])
    if kind == 8:
        return _read_string(stream)
    if kind == 9:
        item_kind = _unpack(stream, "<I")
        count = _unpack(stream, "<Q")
        if count > 1 << 32:
            raise ModelFileError("the GGUF header holds an implausibly long array (corrupt file?)")
        if count > _MAX_KEPT_ARRAY:
            _skip_array(stream, item_kind, count)
            return _Skipped(count)
        return [_read_value(stream, item_kind) for _ in range(count)]
    raise ModelFileError(f"the GGUF header has an unknown value type {kind} (corrupt file?)")


class _Skipped:
    """An array too long to keep, and how long it was."""

    def __init__(self, count: int) -> None:
        self.count = count


def _skip_array(stream: BinaryIO, kind: int, count: int) -> None:
    if kind in _SCALARS:
        stream.seek(struct.calcsize(_SCALARS[kind]) * count, 1)
    elif kind == 8:
        for _ in range(count):
            stream.seek(_unpack(stream, "<Q"), 1)
    else:
        for _ in range(count):
            _read_value(stream, kind)


def read_gguf(path: Path) -> GGUFInfo:
    """Read a GGUF file's header and metadata; raise ModelFileError with the reason."""
    try:
        size = path.stat().st_size
        with path.open("rb") as stream:
            check_magic(path, stream.read(4), size)
            version = _unpack(stream, "<I")
            if version not in (2, 3):
                raise ModelFileError(f"{path.name}: unsupported GGUF version {version}")
            tensor_count = _unpack(stream, "<Q")
            kv_count = _unpack(stream, "<Q")
            if kv_count > 1 << 20:
                raise ModelFileError(f"{path.name}: corrupt GGUF header")
            metadata: dict[str, Any] = {}
            lengths: dict[str, int] = {}
            for _ in range(kv_count):
                key = _read_string(stream)
                value = _read_value(stream, _unpack(stream, "<I"))
                if isinstance(value, _Skipped):
                    lengths[key] = value.count
                    value = None
                metadata[key] = value
            if stream.tell() > size:
                raise ModelFileError("the file ends inside its GGUF header (truncated download?)")
    except OSError as exc:
        raise ModelFileError(f"cannot read {path.name}: {exc.strerror or exc}") from exc
    except ModelFileError as exc:
        if not str(exc).startswith(path.name):
            raise ModelFileError(f"{path.name}: {exc}") from None
        raise
    return GGUFInfo(version=version, tensor_count=tensor_count, metadata=metadata, array_lengths=lengths)


def check_magic(path: Path, head: bytes, size: int) -> None:
    """Refuse empty, legacy GGML and non-GGUF files with a reason."""
    if size == 0:
        raise ModelFileError(f"{path.name} is empty (0 bytes): the download or copy failed")
    if head in LEGACY_MAGICS:
        raise ModelFileError(
            f"{path.name} is a legacy {LEGACY_MAGICS[head]} model file from before GGUF (2023); "
            "llama.cpp no longer reads these. Use a GGUF build of the model instead "
            "(most models are published as .gguf on Hugging Face), or convert it with "
            "llama.cpp's convert scripts."
        )
    if head != GGUF_MAGIC:
        raise ModelFileError(f"{path.name} is not a GGUF model file (its first bytes are {head!r})")


@dataclass
class ModelFile:
    """What kind of model a path holds."""

    #: "gguf", "hf" (a Hugging Face model folder), "whisper-ct2" (CTranslate2 Whisper),
    #: "whisper-ggml" (a whisper.cpp model); speech models: "piper", "kokoro", "silero-vad"
    #: (lokal.formats.speechfile); image models: "diffusers", "sd-cpp" (lokal.formats.diffusion)
    kind: str
    gguf: GGUFInfo | None = None
    hf_config: dict[str, Any] | None = None
    speech: Any = None  # a speech model's SpeechFile (voices, sample rate)
    diffusion: Any = None  # an image model's lokal.formats.diffusion.DiffusionInfo
    #: a Hugging Face folder that carries an ONNX export ONNX Runtime can serve as it stands
    onnx: bool = False


def inspect(path: Path) -> ModelFile:
    """Identify the model at path or raise ModelFileError saying why it cannot serve."""
    if path.is_dir():
        if (path / "modules.json").is_file() or (path / "config.json").is_file():
            config: dict[str, Any] = {}
            try:
                config = json.loads((path / "config.json").read_text())
            except (OSError, ValueError):
                pass
            if (path / "model.bin").is_file() and "alignment_heads" in config:
                return ModelFile(kind="whisper-ct2", hf_config=config)
            return ModelFile(kind="hf", hf_config=config, onnx=carries_onnx(path))
        raise ModelFileError(
            f"{path.name}/ is a folder but not a Hugging Face model (no config.json or modules.json)"
        )
    if not path.exists():
        raise ModelFileError(f"model file {path.name} does not exist in the models folder")
    if is_whisper_ggml(path):
        return ModelFile(kind="whisper-ggml")
    return ModelFile(kind="gguf", gguf=read_gguf(path))


def is_whisper_ggml(path: Path) -> bool:
    """A whisper.cpp GGML model (LocalAI's `whisper` backend): the GGML magic, then
    whisper's hyper-parameters (a vocabulary of 51864-51866 tokens, 1500 audio frames,
    80 or 128 mel bands) where a legacy llama GGML has its own."""
    try:
        with path.open("rb") as stream:
            head = stream.read(48)
    except OSError:
        return False
    if len(head) < 48 or head[:4] not in (b"lmgg", b"ggml"):
        return False
    n_vocab, n_audio_ctx = struct.unpack("<ii", head[4:12])
    n_mels = struct.unpack("<i", head[40:44])[0]
    return 51000 <= n_vocab <= 52000 and n_audio_ctx == 1500 and n_mels in (80, 128)


#: sentence-transformers modules an ONNX export of the transformer alone can be finished with
#: (pooling and normalisation are done outside the graph; a Dense layer is not)
ONNX_PIPELINE_MODULES = ("Transformer", "Pooling", "Normalize")


def carries_onnx(folder: Path) -> bool:
    """Whether a model folder holds an ONNX export ready to serve: lokal's own (`onnx/lokal.json`
    beside `onnx/model.onnx`, the whole pipeline in the graph), or a transformer-only export
    (`onnx/model.onnx`, as sentence-transformers and optimum write them) of a model whose
    other modules are only pooling and normalisation."""
    onnx = folder / "onnx"
    if not (onnx / "model.onnx").is_file():
        return False
    if (onnx / "lokal.json").is_file():
        return True
    try:
        modules = json.loads((folder / "modules.json").read_text())
    except (OSError, ValueError):
        return not (folder / "modules.json").exists()  # a plain transformers folder (a cross-encoder)
    if not isinstance(modules, list):
        return False
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules if isinstance(m, dict)]
    return all(kind in ONNX_PIPELINE_MODULES for kind in kinds)


def is_cross_encoder(config: dict[str, Any] | None) -> bool:
    """A Hugging Face model that scores (query, document) pairs: a reranker."""
    architectures = (config or {}).get("architectures") or []
    return any(str(a).endswith("ForSequenceClassification") for a in architectures)


def disk_size(path: Path | None) -> int | None:
    """Bytes of a model file or folder (None when it is not there)."""
    if path is None:
        return None
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size
    except OSError:
        return None
