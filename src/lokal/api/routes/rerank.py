"""POST /v1/rerank: documents sorted by relevance to a query (Jina/Cohere shape).

A model that is a reranker (a cross-encoder, or a GGUF with rank pooling) scores
the pairs itself; any embedding model ranks by cosine similarity instead, so a
folder with only an embedding model can still serve rerank.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request

from lokal.api.protocol import RerankRequest
from lokal.models.registry import ModelRegistry

router = APIRouter()


@router.post("/rerank", summary="Rerank documents by relevance to a query")
async def rerank(body: RerankRequest, request: Request) -> dict[str, Any]:
    registry: ModelRegistry = request.app.state.registry
    lease = await registry.acquire(body.model, "rerank")
    texts = body.texts
    try:
        if "rerank" in lease.backend.capabilities:
            ranked = await asyncio.to_thread(lease.backend.rerank, body.query, texts)
            scores = [v[0] for v in ranked.vectors]
            tokens = ranked.prompt_tokens
        else:
            embedded = await lease.embed([body.query, *texts])
            query, *documents = embedded.vectors
            scores = [sum(q * d for q, d in zip(query, doc)) for doc in documents]
            tokens = embedded.prompt_tokens
    finally:
        lease.release()
    order = sorted(range(len(texts)), key=lambda i: scores[i], reverse=True)
    if body.top_n is not None:
        order = order[:body.top_n]
    results = []
    for index in order:
        item: dict[str, Any] = {"index": index, "relevance_score": float(scores[index])}
        if body.return_documents:
            item["document"] = {"text": texts[index]}
        results.append(item)
    return {"object": "list", "model": body.model, "results": results,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
