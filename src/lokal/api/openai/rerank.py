"""POST /v1/rerank (and /rerank): documents sorted by relevance to a query.

Two request shapes, told apart by their fields: Jina/Cohere's (`documents`; answer
`{"results": [{index, relevance_score}]}`, each with `document: {"text"}` when
`return_documents` is true), as LocalAI, Dify, Jina and Cohere clients send it (Cohere's
v2 client at /v2/rerank),
and Hugging Face TEI's (`texts`; answer a bare list of `{index, score, text?}`
sorted by score), as TEI clients send it.

A model that is a reranker (a cross-encoder, or a GGUF with rank pooling) scores
the pairs itself; any embedding model ranks by cosine similarity instead, so a
folder with only an embedding model can still serve rerank.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from lokal.api.openai.protocol import RerankRequest
from lokal.errors import BadRequest
from lokal.models import serving
from lokal.models.registry import ModelRegistry

router = APIRouter()


def _tei_model(registry: ModelRegistry) -> str:
    """The model a TEI request without `model` goes to: TEI serves one model, so lokal
    takes the only one that reranks (a cross-encoder before embedding models), and
    asks for `model` when there is a choice."""
    able = [e for e in registry.entries if e.ok and "rerank" in e.tasks]
    native = [e for e in able if e.rerank_by == "cross-encoder"]
    choice = native or able
    if len(choice) == 1:
        return choice[0].name
    names = ", ".join(sorted(e.name for e in choice)) or "none"
    raise BadRequest(f"model is required: this server has {len(choice)} models that can rerank "
                     f"({names}); name one in `model`.", param="model")


@router.post("/rerank", summary="Rerank documents by relevance to a query (Jina/Cohere or TEI shape)")
async def rerank(body: RerankRequest, request: Request) -> Any:
    registry: ModelRegistry = request.app.state.registry
    model = body.model or _tei_model(registry)
    task = body.to_task(model)
    result = await serving.rerank(registry, task)
    scores, texts = result.scores, task.documents
    if body.tei and body.raw_scores:
        scores = result.raw or scores
    order = sorted(range(len(texts)), key=lambda i: scores[i], reverse=True)
    if body.top_n is not None:
        order = order[:body.top_n]
    if body.tei:
        answer = []
        for index in order:
            item: dict[str, Any] = {"index": index, "score": float(scores[index])}
            if body.return_text:
                item["text"] = texts[index]
            answer.append(item)
        return answer
    results = []
    for index in order:
        item = {"index": index, "relevance_score": float(scores[index])}
        if body.return_documents:
            item["document"] = {"text": texts[index]}
        results.append(item)
    return {"object": "list", "model": model, "results": results,
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}}
