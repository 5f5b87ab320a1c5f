"""POST /v1/embeddings: OpenAI's shape, float or base64 vectors."""

from __future__ import annotations

import base64
import struct
from typing import Any

from fastapi import APIRouter, Request

from lokal.api.openai.protocol import EmbeddingRequest
from lokal.models import serving

router = APIRouter()


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector


@router.post("/embeddings", summary="Create embeddings")
async def create_embeddings(body: EmbeddingRequest, request: Request) -> dict[str, Any]:
    result = await serving.embed(request.app.state.registry, body.to_task())
    data = [{"object": "embedding", "index": index, "embedding": _encode(vector, body.encoding_format)}
            for index, vector in enumerate(result.vectors)]
    return {"object": "list", "data": data, "model": body.model,
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}}
