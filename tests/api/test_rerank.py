"""Rerank with native cross-encoders: sentence-transformers' CrossEncoder, and a
GGUF reranker through llama.cpp.

No reranker weights ship on PyPI, so the tests build small cross-encoders with
transformers (random weights, all-MiniLM's tokenizer): their scores carry no
meaning, but lokal must return exactly what the model computes, sorted.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

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
        _check_tei_raw_scores(server, query, docs, [float(e) for e in expected])
        # A cross-encoder cannot embed.
        r = httpx.post(f"{server.base}/v1/embeddings", json={"model": "reranker", "input": "x"}, timeout=60)
        assert r.status_code == 400
    shutil.rmtree(models)


def _check_tei_raw_scores(server: LokalServer, query: str, docs: list[str], expected: list[float]) -> None:
    """TEI's shape with raw_scores: the cross-encoder's logit, before the sigmoid (and
    without `model`: the only reranker in the folder)."""
    r = httpx.post(f"{server.base}/rerank", json={"query": query, "texts": docs, "raw_scores": True,
                                                  "return_text": True}, timeout=120)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert [item["index"] for item in answer] == sorted(range(len(docs)), key=lambda i: -expected[i])
    for item in answer:
        assert 1 / (1 + math.exp(-item["score"])) == pytest.approx(expected[item["index"]], abs=1e-4)
        assert item["text"] == docs[item["index"]]


def make_gguf_reranker(folder: Path) -> tuple[Path, Any]:
    """A tiny random cross-encoder in the layout of bge-reranker (Roberta: a dense +
    tanh + out_proj head on the first token, which llama.cpp runs as rank pooling),
    with all-MiniLM's WordPiece vocabulary, converted to an f32 GGUF by
    `lokal models convert`. Returns the GGUF and the torch model, the reference."""
    import torch
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from lokal.models.convert import convert

    torch.manual_seed(1)
    config = RobertaConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=128, num_labels=1, type_vocab_size=2, max_position_embeddings=514,
                           # WordPiece's [PAD], [CLS], [SEP]: the GGUF's special tokens come from here
                           pad_token_id=0, bos_token_id=101, eos_token_id=102, tokenizer_class="BertTokenizer")
    model = RobertaForSequenceClassification(config).eval()
    with torch.no_grad():  # llama.cpp feeds token type 0 everywhere: make both types alike
        types = model.roberta.embeddings.token_type_embeddings.weight
        types[1] = types[0]
        model.classifier.out_proj.weight *= 400  # logits of a few units, not thousandths
    hf = folder / "hf-reranker"
    model.save_pretrained(hf)
    # vocab.txt without tokenizer.json: the converter keeps the WordPiece vocabulary
    # (with a tokenizer.json it takes a Roberta folder for a byte-level BPE one).
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy2(minilm_folder() / name, hf / name)
    gguf = convert(hf, folder / "reranker.gguf", "f32").path
    return gguf, model


def test_gguf_reranker_scores_with_its_classification_head(tmp_path: Path) -> None:
    import torch
    from transformers import BertTokenizer

    models = tmp_path / "models"
    models.mkdir()
    gguf, reference = make_gguf_reranker(tmp_path)
    os.link(gguf, models / "reranker.gguf")
    (models / "reranker.yaml").write_text("name: reranker\nparameters:\n  model: reranker.gguf\n")
    query = "what is the capital of france"
    docs = ["paris is the capital of france", "bananas are yellow", "the eiffel tower", "dogs bark loudly"]
    # What the model computes for the pairs as llama.cpp lays them out for a WordPiece
    # vocabulary ([CLS] query [SEP] document), through a sigmoid as CrossEncoder applies.
    words = BertTokenizer.from_pretrained(str(minilm_folder()))
    expected = []
    for doc in docs:
        ids = [101, *words.encode(query, add_special_tokens=False), 102, *words.encode(doc, add_special_tokens=False)]
        with torch.no_grad():
            logit = reference(input_ids=torch.tensor([ids]), token_type_ids=torch.zeros(1, len(ids), dtype=torch.long)
                              ).logits[0, 0].item()
        expected.append(1 / (1 + math.exp(-logit)))
    with LokalServer(models) as server:
        r = httpx.post(f"{server.base}/v1/rerank", json={"model": "reranker", "query": query,
                                                         "documents": docs, "return_documents": True},
                       timeout=120)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [item["index"] for item in results] == sorted(range(len(docs)), key=lambda i: -expected[i])
        for item in results:
            assert item["relevance_score"] == pytest.approx(expected[item["index"]], abs=1e-4)
            assert item["document"]["text"] == docs[item["index"]]
        assert r.json()["usage"]["total_tokens"] > 0
        _check_tei_raw_scores(server, query, docs, expected)
        # A reranker has no embeddings to give, and says so.
        r = httpx.post(f"{server.base}/v1/embeddings", json={"model": "reranker", "input": "x"}, timeout=60)
        assert r.status_code == 400
