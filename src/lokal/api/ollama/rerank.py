"""POST /api/rerank: documents sorted by relevance to a query, in the Ollama family.

Ollama itself has no rerank route; Dify's Ollama provider (and Ollama forks that
add one) post `{"model", "query", "documents", "top_n"}` to `<base>/api/rerank`
and read `{"results": [{"index", "relevance_score", "document"?}]}`, `document`
being the text itself (a string, not Jina's `{"text"}` object). lokal sends it only
when `return_documents` is true; without it Dify takes the text it sent, by index.
Errors are Ollama's `{"error": "..."}`, the model name resolves as on every /api route.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import Field

import lokal.api.ollama.models as catalog
from lokal.api.ollama.protocol import _Request
from lokal.api.ollama.routes import read_body
from lokal.models import serving
from lokal.tasks import RerankTask

router = APIRouter()

MAX_RERANK_DOCUMENTS = 1000


class RerankRequest(_Request):
    model: str = Field(min_length=1, max_length=256)
    query: str = Field(min_length=1)
    documents: list[str] = Field(min_length=1, max_length=MAX_RERANK_DOCUMENTS)
    top_n: int | None = Field(None, ge=1)
    return_documents: bool = False
    keep_alive: Any = None


@router.post("/rerank", summary="Rerank documents by relevance to a query (Dify's Ollama provider)")
async def rerank(request: Request) -> dict[str, Any]:
    body = await read_body(request, RerankRequest)
    registry = request.app.state.registry
    entry = catalog.resolve(registry, body.model)
    result = await serving.rerank(registry, RerankTask(entry.name, body.query, body.documents, body.top_n))
    order = sorted(range(len(body.documents)), key=lambda i: result.scores[i], reverse=True)
    results = []
    for index in order[:body.top_n] if body.top_n is not None else order:
        item: dict[str, Any] = {"index": index, "relevance_score": float(result.scores[index])}
        if body.return_documents:
            item["document"] = body.documents[index]
        results.append(item)
    return {"model": body.model, "results": results}
