"""Running an engine call for a request and answering it, streamed or whole."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from lokal.api.errors import APIError, error_body
from lokal.api.streaming import SSE_HEADERS, Aggregator, Shaper, engine_chunks, guarded, sse
from lokal.models.functions import parse_reply
from lokal.models.prompting import EngineCall
from lokal.models.registry import Lease

log = logging.getLogger("lokal.api")


async def _watch_disconnect(request: Request, cancel: threading.Event) -> None:
    """Set cancel when the client goes away (the body has been read by now)."""
    while not cancel.is_set():
        message = await request.receive()
        if message["type"] == "http.disconnect":
            cancel.set()
            return


def _require(lease: Lease, capability: str) -> None:
    if capability not in lease.backend.capabilities:
        raise APIError(400, f"The model '{lease.entry.name}' does not support {capability} "
                            f"(it supports: {', '.join(sorted(lease.backend.capabilities)) or 'nothing'}).",
                       param="model")


async def respond(request: Request, lease: Lease, call: EngineCall, *, kind: str, stream: bool,
                  include_usage: bool, timeout: float | None = None) -> Any:
    """Run call on the leased model; the lease is released when the engine is done."""
    try:
        _require(lease, call.mode)
    except APIError:
        lease.release()
        raise
    run = lease.backend.chat if call.mode == "chat" else lease.backend.complete
    shaper = Shaper(kind, call.mode, lease.entry.name, int(call.body.get("n") or 1))
    cancel = threading.Event()
    registry = request.app.state.registry
    chunks = guarded(engine_chunks(lambda sink: run(call.body, sink), cancel, on_done=lease.release),
                     cancel, timeout=timeout or request.app.state.settings.request_timeout,
                     busy=registry.busy_timeout, on_stuck=lambda: registry.retire(lease),
                     stopping=request.app.state.stopping)
    watcher = asyncio.create_task(_watch_disconnect(request, cancel))
    observation = request.app.state.metrics.observe(lease.entry.name, kind)  # metrics

    def finish() -> None:
        cancel.set()
        watcher.cancel()

    if not stream or call.functions is not None:
        aggregator = Aggregator(shaper)
        try:
            async for batch in chunks:
                observation.batch(batch)  # metrics
                for chunk in batch:
                    for shaped in shaper.shape(chunk):
                        aggregator.add(shaped)
        except BaseException:
            observation.finish(shaper.usage, "error")  # metrics
            raise
        finally:
            await chunks.aclose()
            observation.finish(shaper.usage, "cancelled" if watcher.done() else "ok")  # metrics
            finish()
        result = aggregator.result()
        if call.functions is not None:
            for choice in result["choices"]:
                message, reason = parse_reply(choice["message"].get("content") or "", call.functions)
                choice["message"] = message
                choice["finish_reason"] = reason
            if stream:  # the JSON was never the client's to see: send the parsed answer
                return StreamingResponse(_replay(shaper, result, include_usage), media_type="text/event-stream",
                                         headers=SSE_HEADERS)
        return JSONResponse(result)

    # Errors before the first chunk (context overflow, bad grammar) are HTTP errors.
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        first = None
    except BaseException:
        await chunks.aclose()
        observation.finish(None, "error")  # metrics
        finish()
        raise
    observation.batch(first or [])  # metrics
    status = "cancelled"  # metrics: until the stream ends

    async def events() -> AsyncIterator[bytes]:
        nonlocal status
        try:
            batch = first or []
            while True:
                # Everything the engine sent since the last write goes out in one write.
                data = b"".join(sse(shaped) for chunk in batch for shaped in shaper.shape(chunk))
                if data:
                    yield data
                try:
                    batch = await anext(chunks)
                except StopAsyncIteration:
                    break
                observation.batch(batch)  # metrics
            status = "ok"  # metrics
            yield (sse(shaper.usage_chunk()) if include_usage else b"") + sse("[DONE]")
        except Exception as exc:  # noqa: BLE001 - reported to the client in-stream
            status = "error"  # metrics
            yield sse(error_body(exc, request.url.path))
            yield sse("[DONE]")
        finally:
            await chunks.aclose()
            observation.finish(shaper.usage, status)  # metrics
            finish()

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)


async def _replay(shaper: Shaper, result: dict[str, Any], include_usage: bool) -> AsyncIterator[bytes]:
    """A finished chat answer as a stream: role, content or call, finish, [usage], [DONE]."""
    for choice in result["choices"]:
        index, message = choice["index"], choice["message"]
        delta: dict[str, Any] = {"role": "assistant", "content": message.get("content") or ""}
        if message.get("function_call"):
            delta = {"role": "assistant", "content": None, "function_call": message["function_call"]}
        elif message.get("tool_calls"):
            delta = {"role": "assistant", "content": None,
                     "tool_calls": [dict(call, index=i) for i, call in enumerate(message["tool_calls"])]}
        yield sse(shaper.chunk([{"index": index, "delta": delta, "logprobs": None, "finish_reason": None}]))
        yield sse(shaper.chunk([{"index": index, "delta": {}, "logprobs": None,
                                 "finish_reason": choice["finish_reason"]}]))
    if include_usage:
        yield sse(shaper.usage_chunk())
    yield sse("[DONE]")
