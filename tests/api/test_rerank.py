"""Rerank with a native cross-encoder (sentence-transformers CrossEncoder).

No reranker weights ship on PyPI, so the test builds a small BERT cross-encoder
with transformers (random weights, all-MiniLM's tokenizer): its scores carry no
meaning, but lokal must return exactly what the model computes, sorted.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from tests.conftest import LokalServer, minilm_folder


def make_cross_encoder(target: Path) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, num_labels=1)
    BertForSequenceClassification(config).save_pretrained(target)
    BertTokenizerFast.from_pretrained(str(minilm_folder())).save_pretrained(target)
    return target


def test_cross_encoder_scores_pairs_and_sorts(tmp_path: Path) -> None:
    from sentence_transformers import CrossEncoder

    models = tmp_path / "models"
    models.mkdir()
    make_cross_encoder(models / "tiny-reranker")
    (models / "reranker.yaml").write_text("name: reranker\nparameters:\n  model: tiny-reranker\n")
    query = "What is the capital of France?"
    docs = ["Paris is the capital of France.", "Bananas are yellow.", "The Eiffel tower.", "Dogs bark."]
    expected = CrossEncoder(str(models / "tiny-reranker"), device="cpu").predict([(query, d) for d in docs])
    with LokalServer(models) as server:
        r = httpx.post(f"{server.base}/v1/rerank", json={"model": "reranker", "query": query,
                                                         "documents": docs, "top_n": 3}, timeout=120)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert len(results) == 3
        want = sorted(range(len(docs)), key=lambda i: expected[i], reverse=True)[:3]
        assert [item["index"] for item in results] == want
        for item in results:
            assert item["relevance_score"] == pytest.approx(float(expected[item["index"]]), abs=1e-5)
        assert r.json()["usage"]["total_tokens"] > 0
        # A cross-encoder cannot embed.
        r = httpx.post(f"{server.base}/v1/embeddings", json={"model": "reranker", "input": "x"}, timeout=60)
        assert r.status_code == 400
    shutil.rmtree(models)
