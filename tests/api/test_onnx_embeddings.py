"""Embedding models and cross-encoders on ONNX Runtime: the same answers as on torch.

`embeddings_backend: onnx` (or a folder that carries an ONNX export) runs a
sentence-transformers folder on ONNX Runtime in a worker that never imports torch;
lokal exports the folder once (on the first load, or `lokal models convert FOLDER
--to onnx`) and keeps the export in the folder's `onnx/`. The general embedding
contract runs on this engine too (tests/api/test_embeddings.py); here: the vectors
against torch's on the demo model, the int8 export, the cache, and rerank.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.api.test_rerank import make_cross_encoder
from tests.conftest import LokalServer, place_folder

# Sentences as a knowledge base and its questions hold them.
SENTENCES = [
    "The Eiffel Tower is in Paris and was completed in 1889.",
    "How do I reset my password if I no longer have access to my email?",
    "Refunds are processed within five business days after the returned item arrives.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Our office is closed on public holidays; support answers by email within a day.",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "The meeting has been moved to Thursday at 3pm in room B.",
    "Large language models predict the next token from the ones before it.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "To install the package, run pip install lokal and start the server.",
    "Mount Everest is the highest mountain above sea level.",
    "Please attach the invoice as a PDF when you submit the expense report.",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return place_folder(tmp_path_factory.mktemp("onnx") / "models", "minilm")


@pytest.fixture(scope="module")
def onnx_server(folder: Path) -> Iterator[LokalServer]:
    models = folder.parent
    for name, extra in (("torch", "embeddings_backend: torch\n"), ("onnx", "embeddings_backend: onnx\n"),
                        ("int8", "embeddings_backend: onnx\nquantization: int8\n"),
                        ("openvino", "embeddings_backend: openvino\n")):
        (models / f"{name}.yaml").write_text(f"name: {name}\nparameters:\n  model: minilm\n{extra}")
    with LokalServer(models, "--preload-models", "onnx,int8") as server:
        server.wait_ready(1200)  # the float export, then the int8 one, on a busy machine
        yield server


def vectors(server: LokalServer, model: str, texts: list[str]) -> tuple[np.ndarray, int]:
    r = httpx.post(f"{server.base}/v1/embeddings", json={"model": model, "input": texts}, timeout=300)
    assert r.status_code == 200, r.text
    body = r.json()
    return np.array([item["embedding"] for item in body["data"]]), body["usage"]["prompt_tokens"]


def test_onnx_vectors_are_torchs(onnx_server: LokalServer) -> None:
    torch, torch_tokens = vectors(onnx_server, "torch", SENTENCES)
    fp32, fp32_tokens = vectors(onnx_server, "onnx", SENTENCES)
    int8, _ = vectors(onnx_server, "int8", SENTENCES)
    assert fp32.shape == torch.shape == (len(SENTENCES), 384)
    assert np.allclose(np.linalg.norm(fp32, axis=1), 1, atol=1e-5)
    assert np.min(np.sum(fp32 * torch, axis=1)) >= 0.999
    assert np.min(np.sum(int8 * torch, axis=1)) >= 0.99
    assert fp32_tokens == torch_tokens  # usage counts the same tokens
    # One at a time (each in a batch of its own) as in a batch.
    alone, _ = vectors(onnx_server, "onnx", SENTENCES[:1])
    assert float(np.sum(alone[0] * fp32[0])) > 0.9999
    log = onnx_server.log()
    assert "ONNX Runtime, onnx/model.onnx" in log and "onnx/model_int8.onnx, int8" in log


def test_openvino_runs_the_same_export(onnx_server: LokalServer) -> None:
    onnx, _ = vectors(onnx_server, "onnx", SENTENCES)
    openvino, _ = vectors(onnx_server, "openvino", SENTENCES)
    assert np.min(np.sum(onnx * openvino, axis=1)) >= 0.9999
    assert "OpenVINO, onnx/model.onnx" in onnx_server.log()


def test_the_export_is_kept_whole_in_the_folder(onnx_server: LokalServer, folder: Path) -> None:
    files = sorted(p.name for p in (folder / "onnx").iterdir())
    assert files == [".export.lock", "lokal.json", "model.onnx", "model_int8.onnx"]  # no temporary names left
    note = json.loads((folder / "onnx" / "lokal.json").read_text())
    assert note["graph"] == "sentence_embedding" and note["window"] == 256
    assert note["check"]["min_cosine_to_torch"] >= 0.9999 and note["int8"]["min_cosine"] > 0.95


def test_a_folder_with_an_export_is_served_from_it_without_being_asked(onnx_server: LokalServer,
                                                                         folder: Path) -> None:
    models = folder.parent / "again"
    models.mkdir()
    place_folder(models, "minilm", source=folder)  # the folder as it is now, its onnx/ included
    (models / "plain.yaml").write_text("name: plain\nparameters:\n  model: minilm\nembeddings: true\n")
    with LokalServer(models) as server:
        got, _ = vectors(server, "plain", SENTENCES[:3])
        log = server.log()
    assert "ONNX Runtime" in log and "making its" not in log  # the kept export, not a new one
    want, _ = vectors(onnx_server, "onnx", SENTENCES[:3])
    assert np.allclose(got, want, atol=1e-6)


def test_a_cross_encoder_reranks_on_onnx_as_on_torch(tmp_path: Path) -> None:
    from sentence_transformers import CrossEncoder

    models = tmp_path / "models"
    make_cross_encoder(models / "tiny-reranker")
    (models / "reranker.yaml").write_text("name: reranker\nparameters:\n  model: tiny-reranker\n"
                                          "embeddings_backend: onnx\n")
    query = "What is the capital of France?"
    docs = ["Paris is the capital of France.", "Bananas are yellow.", "The Eiffel tower.", "Dogs bark."]
    expected = CrossEncoder(str(models / "tiny-reranker"), device="cpu").predict([(query, d) for d in docs])
    with LokalServer(models) as server:
        r = httpx.post(f"{server.base}/v1/rerank", timeout=600,
                       json={"model": "reranker", "query": query, "documents": docs})
        assert r.status_code == 200, r.text
        scores = {item["index"]: item["relevance_score"] for item in r.json()["results"]}
        assert "ONNX Runtime" in server.log()
    for index, want in enumerate(expected):
        assert scores[index] == pytest.approx(float(want), abs=1e-4)


def test_convert_to_onnx_from_the_command_line(tmp_path: Path) -> None:
    folder = place_folder(tmp_path, "minilm")
    done = subprocess.run([sys.executable, "-m", "lokal", "models", "convert", str(folder), "--to", "onnx",
                           "--quantize", "int8"], capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "made model.onnx, model_int8.onnx" in done.stdout
    assert "int8 vectors at cosine" in done.stdout
    again = subprocess.run([sys.executable, "-m", "lokal", "models", "convert", str(folder), "--to", "onnx"],
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "made nothing" in again.stdout
    refused = subprocess.run([sys.executable, "-m", "lokal", "models", "convert", str(folder), str(tmp_path / "x"),
                              "--to", "onnx"], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "leave DEST out" in refused.stderr
