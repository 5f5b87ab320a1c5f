"""Anthropic's Messages API: create a message (whole or streamed), count tokens.

Keys come as `x-api-key` or `Authorization: Bearer` (the auth middleware takes
both); `anthropic-version`, `anthropic-beta` and `?beta=true` are accepted and
change nothing. Errors are answered in Anthropic's envelope on these paths.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import Field

from lokal.api.anthropic.protocol import MessagesRequest
from lokal.api.anthropic.render import MessageRenderer
from lokal.api.counting import count_prompt_tokens
from lokal.api.generation import start
from lokal.api.images import loader_for
from lokal.api.respond import respond

router = APIRouter()

class CountTokensRequest(MessagesRequest):
    max_tokens: int | None = Field(None, ge=1)  # type: ignore[assignment]


def _keep_billing(request: Request) -> bool:
    return bool(getattr(request.app.state.settings, "keep_billing_header", False))


@router.post("/messages", summary="Create a message (Anthropic Messages API)")
async def create_message(body: MessagesRequest, request: Request) -> Any:
    task = await body.to_task_with_images(loader_for(request), keep_billing_line=_keep_billing(request))
    run = await start(request, task)
    return await respond(request, run, MessageRenderer(body.model), stream=body.stream)


@router.post("/messages/count_tokens", summary="Count a Messages request's input tokens")
async def count_tokens(body: CountTokensRequest, request: Request) -> dict[str, Any]:
    task = await body.to_task_with_images(loader_for(request), keep_billing_line=_keep_billing(request),
                                          count_only=True)
    count, _exact = await count_prompt_tokens(request, task)
    return {"input_tokens": count}
