"""Anthropic's Messages API: create a message (whole or streamed), count tokens.

Keys come as `x-api-key` or `Authorization: Bearer` (the auth middleware takes
both); `anthropic-version`, `anthropic-beta` and `?beta=true` are accepted and
change nothing. Errors are answered in Anthropic's envelope on these paths.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import Field

from lokal.api.anthropic.protocol import MessagesRequest
from lokal.api.anthropic.render import MessageRenderer, StopScanner, anthropic_envelope, encode
from lokal.api.counting import count_prompt_tokens
from lokal.api.errors import as_lokal_error, register_envelope
from lokal.api.generation import SSE_HEADERS, Run, start
from lokal.api.images import loader_for
from lokal.tasks import ChatTask, Delta, Usage

router = APIRouter()

for _prefix in ("/v1/messages", "/messages"):
    register_envelope(_prefix, anthropic_envelope)


class CountTokensRequest(MessagesRequest):
    max_tokens: int | None = Field(None, ge=1)  # type: ignore[assignment]


def _keep_billing(request: Request) -> bool:
    return bool(getattr(request.app.state.settings, "keep_billing_header", False))


async def _deltas(run: Run, scanner: StopScanner, counted: list[int]) -> AsyncIterator[list[Delta]]:
    """The run's deltas, cut at the first stop sequence of the request (the run is closed then)."""
    async with contextlib.aclosing(run.batches()) as batches:
        async for batch in batches:
            counted[0] += sum(1 for d in batch if d.text or d.tool_calls or d.reasoning)
            out = scanner.feed(batch)
            if out:
                yield out
            if scanner.matched is not None:
                break  # closing the batches closes the run: the engine stops within a token


async def _usage(request: Request, run: Run, task: ChatTask, counted: int) -> Usage:
    """The run's usage; after lokal stopped it at a stop sequence the engine reports none,
    so the prompt is counted and the output is the tokens that were streamed."""
    if run.generation.reported_usage:
        return run.usage
    prompt, _exact = await count_prompt_tokens(request, task)
    return Usage(prompt, counted, None)


@router.post("/messages", summary="Create a message (Anthropic Messages API)")
async def create_message(body: MessagesRequest, request: Request) -> Any:
    task = await body.to_task_with_images(loader_for(request), keep_billing_line=_keep_billing(request))
    run = await start(request, task)
    renderer = MessageRenderer(body.model)
    scanner = StopScanner(body.stop_sequences or [])
    counted = [0]
    if not body.stream:
        async for batch in _deltas(run, scanner, counted):
            renderer.feed(batch)
        return JSONResponse(renderer.message(await _usage(request, run, task, counted[0])))

    async def events() -> AsyncIterator[bytes]:
        yield encode(renderer.start())
        try:
            async for batch in _deltas(run, scanner, counted):
                data = encode(renderer.feed(batch))
                if data:
                    yield data
            yield encode(renderer.end(await _usage(request, run, task, counted[0])))
        except Exception as exc:  # noqa: BLE001 - reported to the client in-stream
            yield encode(renderer.fail(as_lokal_error(exc)))

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)


@router.post("/messages/count_tokens", summary="Count a Messages request's input tokens")
async def count_tokens(body: CountTokensRequest, request: Request) -> dict[str, Any]:
    task = await body.to_task_with_images(loader_for(request), keep_billing_line=_keep_billing(request),
                                          count_only=True)
    count, _exact = await count_prompt_tokens(request, task)
    return {"input_tokens": count}
