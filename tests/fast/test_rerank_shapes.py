"""One rerank answer every client reads: `document` only when asked for.

What each client parses (read from their code): Dify's LocalAI provider posts to
`<server_url>/rerank` and takes `result["document"]["text"]` when `document` is there,
else its own `docs[index]`; Dify's Ollama provider posts to `<base_url>/api/rerank` and
takes `item["document"]` as the text itself (a string), else `documents[index]`;
Jina's API returns `document: {"text"}` with `return_documents`; Cohere's SDKs (v1 at
/v1/rerank, v2 at /v2/rerank) parse `index` and `relevance_score`, and v1 `document`
when present."""

from __future__ import annotations

import cohere
import httpx

DOCS = ["a red car", "a blue boat", "red wine and a red car"]
QUERY = "red car"
CONFIG = "embeddings: true\n"


def dify_localai(base: str, docs: list[str]) -> list[tuple[int, str, float]]:
    """What Dify's LocalAI rerank provider makes of lokal's answer."""
    r = httpx.post(f"{base}/v1/rerank", json={"model": "fake", "query": QUERY, "documents": docs,
                                             "top_n": None}, timeout=10)
    r.raise_for_status()
    out = []
    for result in r.json()["results"]:
        index = result["index"]
        text = result["document"]["text"] if "document" in result else docs[index]
        out.append((index, text, result["relevance_score"]))
    return out


def dify_ollama(base: str, docs: list[str], **extra: object) -> list[tuple[int, str, float]]:
    """What Dify's Ollama rerank provider makes of it (document as a string)."""
    r = httpx.post(f"{base}/api/rerank", json={"model": "fake", "query": QUERY, "documents": docs, **extra},
                   timeout=10)
    r.raise_for_status()
    out = []
    for item in r.json().get("results", []):
        index = item["index"]
        text = item["document"] if "document" in item else docs[index]
        assert isinstance(text, str)  # Dify builds RerankDocument(text=...) from it
        out.append((index, text, item["relevance_score"]))
    return out


def test_every_client_reads_the_same_ranking(fake_server) -> None:
    server = fake_server(config=CONFIG)
    ranked = dify_localai(server.base, DOCS)
    assert [index for index, _, _ in ranked][-1] == 1  # the boat is least relevant
    assert [text for index, text, _ in ranked] == [DOCS[index] for index, _, _ in ranked]
    assert dify_ollama(server.base, DOCS) == ranked
    assert dify_ollama(server.base, DOCS, return_documents=True) == ranked
    assert dify_ollama(server.base, DOCS, top_n=2) == ranked[:2]

    v2 = cohere.ClientV2(base_url=server.base, api_key="unused").rerank(
        model="fake", query=QUERY, documents=DOCS, top_n=2)
    assert [(item.index, item.relevance_score) for item in v2.results] == [(i, s) for i, _, s in ranked[:2]]
    v1 = cohere.Client(base_url=server.base, api_key="unused").rerank(
        model="fake", query=QUERY, documents=DOCS, return_documents=True)
    assert [(item.index, item.document.text) for item in v1.results] == [(i, t) for i, t, _ in ranked]


def test_document_only_when_asked_for(fake_server) -> None:
    server = fake_server(config=CONFIG)
    with server.client() as client:
        plain = client.post("/v1/rerank", json={"model": "fake", "query": QUERY, "documents": DOCS}).json()
        assert all(set(item) == {"index", "relevance_score"} for item in plain["results"])
        jina = client.post("/v1/rerank", json={"model": "fake", "query": QUERY, "documents": DOCS,
                                               "return_documents": True}).json()
        assert all(item["document"] == {"text": DOCS[item["index"]]} for item in jina["results"])
        ollama = client.post("/api/rerank", json={"model": "fake:latest", "query": QUERY, "documents": DOCS,
                                                 "return_documents": True}).json()
        assert all(item["document"] == DOCS[item["index"]] for item in ollama["results"])


def test_ollama_rerank_errors_are_ollamas(fake_server) -> None:
    server = fake_server(config=CONFIG)
    with server.client() as client:
        r = client.post("/api/rerank", json={"model": "nope", "query": QUERY, "documents": DOCS})
        assert (r.status_code, r.json()) == (404, {"error": "model 'nope' not found"})
        r = client.post("/api/rerank", json={"model": "fake", "query": QUERY, "documents": []})
        assert r.status_code == 400 and set(r.json()) == {"error"}
