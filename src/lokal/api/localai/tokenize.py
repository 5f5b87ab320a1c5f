"""LocalAI's `POST /v1/tokenize` `{model, content}` -> `{tokens}`: the model's own token ids."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from lokal.api.textops import text_op

router = APIRouter(tags=["LocalAI"])


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    model: str = Field(min_length=1, max_length=256)
    content: str


@router.post("/v1/tokenize", summary="LocalAI: tokenize text with the model's tokenizer")
async def tokenize(body: TokenizeRequest, request: Request) -> dict[str, Any]:
    answer = await text_op(request, body.model, "tokenize", {"content": body.content, "add_special": False,
                                                             "parse_special": True})
    return {"tokens": answer["tokens"]}
