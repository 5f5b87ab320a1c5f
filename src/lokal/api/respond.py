"""The one way out: a running answer and a family's renderer into an HTTP response.

Every API family answers a generation (and every other streamed answer: speech,
images) the same way: its route starts the work, builds the family's `Renderer`
and returns `respond(request, answer, renderer, stream=...)`. What the families
share lives here once:

- a whole answer: every item collected, then `renderer.whole(items, usage)`;
- a stream: `start()` at once (the headers and the family's opening event leave
  before the prompt is processed), then `feed(batch)` per batch of items,
  `keepalive()` whenever nothing was written for `KEEPALIVE_SECONDS` (a long
  prefill, a queue: clients with idle timeouts stay), `end(usage)` after the last
  item, or `fail(error)` — the error in the family's own envelope, in-stream — when
  the work fails after the stream began.

A renderer only translates; it never awaits, never touches the request, and never
decides what an error is (`as_lokal_error` does, once).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, Generic, Protocol, TypeVar

import orjson
from fastapi import Request
from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse

from lokal.api.errors import as_lokal_error
from lokal.errors import LokalError
from lokal.tasks import Usage

Item = TypeVar("Item")
Item_contra = TypeVar("Item_contra", contravariant=True)

#: Seconds without a byte on a stream after which the family's keep-alive is sent
#: (the default of the STREAM_KEEPALIVE setting).
KEEPALIVE_SECONDS = 5.0

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(data: dict[str, Any] | str, event: str | None = None) -> bytes:
    """One Server-Sent Event (orjson: compact UTF-8, several times json's speed per token)."""
    payload = data.encode() if isinstance(data, str) else orjson.dumps(data)
    if event is not None:
        return b"event: " + event.encode() + b"\ndata: " + payload + b"\n\n"
    return b"data: " + payload + b"\n\n"


def sse_events(events: list[tuple[str, dict[str, Any]]]) -> bytes:
    """Named Server-Sent Events, in one write."""
    return b"".join(sse(data, event=kind) for kind, data in events)


def ndjson(obj: dict[str, Any]) -> bytes:
    """One line of newline-delimited JSON."""
    return orjson.dumps(obj) + b"\n"


#: An SSE comment: ignored by every SSE parser, enough to keep a connection alive.
SSE_COMMENT = b": keep-alive\n\n"


class Answer(Protocol[Item]):
    """Work whose result comes in batches of items (deltas, audio, image steps)."""

    @property
    def usage(self) -> Usage: ...

    def batches(self) -> AsyncIterator[list[Item]]:
        """Every batch, in order; the answer is closed when it ends."""
        ...

    async def collect(self) -> list[Item]:
        """Every item, for an answer that is not streamed."""
        ...


class Renderer(Protocol[Item_contra]):
    """A family's wire format for one answer (see the module's docstring)."""

    media_type: str

    def start(self) -> bytes: ...

    def feed(self, items: list[Item_contra]) -> bytes: ...

    def keepalive(self) -> bytes: ...

    def end(self, usage: Usage) -> bytes: ...

    def fail(self, err: LokalError) -> bytes: ...

    def whole(self, items: list[Item_contra], usage: Usage) -> Response: ...


class _Idle:
    """Marks a quiet spell in `_with_keepalive`'s output."""


IDLE = _Idle()


async def _with_keepalive(batches: AsyncIterator[Any], interval: float) -> AsyncIterator[Any]:
    """The batches, with `IDLE` in between whenever none came for interval seconds.

    The next batch is awaited in a task that a quiet spell never cancels (cancelling
    an async generator's `anext` would end the generator)."""
    pending: asyncio.Task[Any] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(batches))
            done, _ = await asyncio.wait({pending}, timeout=interval)
            if not done:
                yield IDLE
                continue
            task, pending = pending, None
            try:
                batch = task.result()
            except StopAsyncIteration:
                return
            yield batch
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        with contextlib.suppress(BaseException):
            await batches.aclose()  # type: ignore[attr-defined]


class _Stream(Generic[Item]):
    """The body of a streamed answer."""

    def __init__(self, answer: Answer[Item], renderer: Renderer[Item], interval: float) -> None:
        self.answer = answer
        self.renderer = renderer
        self.interval = interval

    async def __aiter__(self) -> AsyncIterator[bytes]:
        renderer = self.renderer
        opening = renderer.start()
        if opening:
            yield opening
        try:
            async for batch in _with_keepalive(self.answer.batches(), self.interval):
                data = renderer.keepalive() if batch is IDLE else renderer.feed(batch)
                if data:
                    yield data
            closing = renderer.end(self.answer.usage)
        except Exception as exc:  # noqa: BLE001 - reported to the client in-stream
            closing = renderer.fail(as_lokal_error(exc))
        if closing:
            yield closing


async def respond(request: Request, answer: Answer[Item], renderer: Renderer[Item], *, stream: bool,
                  headers: dict[str, str] | None = None, background: BackgroundTask | None = None) -> Response:
    """The HTTP response of answer in renderer's wire format, streamed or whole; a
    stream's keep-alive interval is the server's `STREAM_KEEPALIVE`."""
    keepalive = getattr(request.app.state.settings, "stream_keepalive", KEEPALIVE_SECONDS)
    if not stream:
        response = renderer.whole(await answer.collect(), answer.usage)
        if headers:
            response.headers.update(headers)
        if background is not None:
            response.background = background
        return response
    stream_headers = dict(SSE_HEADERS) if renderer.media_type == "text/event-stream" else {}
    stream_headers.update(headers or {})
    return StreamingResponse(_Stream(answer, renderer, keepalive).__aiter__(), media_type=renderer.media_type,
                             headers=stream_headers, background=background)

