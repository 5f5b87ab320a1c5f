"""POST /v1/embeddings: OpenAI's shape, float or base64 vectors."""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

from fastapi import APIRouter, Request

from lokal.api.errors import APIError
from lokal.api.protocol import EmbeddingRequest
from lokal.models.embedding import as_token_lists, decode_openai_tokens
from lokal.models.registry import ModelRegistry

router = APIRouter()


def _shorten(vector: list[float], dimensions: int) -> list[float]:
    """The first dimensions values, back to unit length (Matryoshka-style)."""
    head = vector[:dimensions]
    norm = math.sqrt(sum(v * v for v in head)) or 1.0
    return [v / norm for v in head]


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector


@router.post("/embeddings", summary="Create embeddings")
async def create_embeddings(body: EmbeddingRequest, request: Request) -> dict[str, Any]:
    registry: ModelRegistry = request.app.state.registry
    lease = await registry.acquire(body.model, "embed")
    try:
        config = lease.entry.config
        token_lists = as_token_lists(body.input)
        inputs: list[str] | list[list[int]]
        if token_lists is None:
            inputs = [body.input] if isinstance(body.input, str) else list(body.input)  # type: ignore[list-item]
        elif config is not None and config.token_ids == "model":
            inputs = token_lists
        else:
            inputs = decode_openai_tokens(token_lists)
        native = lease.backend.dimensions
        if body.dimensions is not None and native is not None and body.dimensions > native:
            raise APIError(400, f"dimensions must be at most {native} for the model '{body.model}'.",
                           param="dimensions")
        result = await lease.embed(inputs)
    finally:
        lease.release()
    data = []
    for index, vector in enumerate(result.vectors):
        if body.dimensions is not None and body.dimensions < len(vector):
            vector = _shorten(vector, body.dimensions)
        data.append({"object": "embedding", "index": index,
                     "embedding": _encode(vector, body.encoding_format)})
    return {"object": "list", "data": data, "model": body.model,
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}}
