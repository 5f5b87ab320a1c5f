"""POST /v1/rerank: documents sorted by relevance to a query (Jina/Cohere shape).

A model that is a reranker (a cross-encoder, or a GGUF with rank pooling) scores
the pairs itself; any embedding model ranks by cosine similarity instead, so a
folder with only an embedding model can still serve rerank.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from lokal.api.openai.protocol import RerankRequest
from lokal.models import serving

router = APIRouter()


@router.post("/rerank", summary="Rerank documents by relevance to a query")
async def rerank(body: RerankRequest, request: Request) -> dict[str, Any]:
    task = body.to_task()
    result = await serving.rerank(request.app.state.registry, task)
    scores, texts = result.scores, task.documents
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
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}}
