"""A chat or completion task running for one HTTP request, whatever its API family.

`start` leases the model, plans the engine call, starts the generation, watches
for the client going away (which stops generation within a token and frees the
slot, streaming or not) and waits for the first deltas, so that errors before
the first token (unknown model, busy, context overflow, bad grammar) are HTTP
errors in the family's envelope. A streamed answer waits at most
`FIRST_DELTAS_WAIT` seconds: a prompt that takes longer to process (or a queue)
must not hold back the headers and the family's opening event, so later errors
are reported in-stream. The `Run` it returns is an `api.respond.Answer` of deltas.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from lokal.errors import BadRequest, ShuttingDown
from lokal.metrics import RequestObservation
from lokal.models.catalog import ModelEntry
from lokal.models.generation import Generation
from lokal.models.prompting import plan_chat, plan_completion
from lokal.tasks import ChatTask, CompletionTask, Delta, Usage

#: Seconds a streamed answer waits for its first deltas before its headers go out.
FIRST_DELTAS_WAIT = 1.0


async def _watch_disconnect(request: Request, generation: Generation) -> None:
    """Stop the generation when the client goes away (the body has been read by now)."""
    while not generation.cancel.is_set():
        message = await request.receive()
        if message["type"] == "http.disconnect":
            generation.stop()
            return


def _tokens(batch: list[Delta]) -> int:
    return sum(1 for d in batch if d.text or d.reasoning or d.tool_calls)


async def _end_at_shutdown(stopping: asyncio.Event, generation: Generation) -> None:
    """When the server's shutdown grace is over, end the generation with an error the
    client is told in-stream, before the server closes the connection."""
    await stopping.wait()
    generation.interrupt(ShuttingDown())


@dataclass
class Run:
    """A started generation (an `api.respond.Answer` of deltas): its first batch, or
    the wait for it when a stream's headers went out before it came."""

    generation: Generation
    entry: ModelEntry
    first: list[Delta] | asyncio.Future[list[Delta]]
    observation: RequestObservation
    _stack: contextlib.AsyncExitStack
    status: str = field(default="cancelled")  # until the generation ends: ok or error

    @property
    def usage(self) -> Usage:
        return self.generation.usage

    async def batches(self) -> AsyncIterator[list[Delta]]:
        """Every batch of deltas, the first one included; closes the run at the end."""
        try:
            first = self.first
            if isinstance(first, asyncio.Future):
                try:
                    first = await first
                except StopAsyncIteration:
                    first = []
                self.observation.chunk(_tokens(first))
            if first:
                yield first
            async for batch in self.generation:
                self.observation.chunk(_tokens(batch))
                yield batch
            self.status = "ok"
        except Exception:  # a client gone (cancelled, closed) stays "cancelled"
            self.status = "error"
            raise
        finally:
            await self.close()

    async def collect(self) -> list[Delta]:
        """The whole answer's deltas, for a response that is not streamed."""
        deltas: list[Delta] = []
        async for batch in self.batches():
            deltas.extend(batch)
        return deltas

    async def close(self) -> None:
        if isinstance(self.first, asyncio.Future) and not self.first.done():
            self.first.cancel()
        await self._stack.aclose()
        generation = self.generation
        if generation.prompt_seconds is not None:
            self.observation.prompt_seconds(generation.prompt_seconds)
        # What the engine reported, or (a client gone, a run cut short) what is known.
        u = generation.known_usage
        usage = None
        if u is not None:
            usage = {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                     "prompt_tokens_details": {"cached_tokens": u.cached_tokens or 0}}
        self.observation.finish(usage, self.status)


async def _first_deltas(generation: Generation, stream: bool) -> list[Delta] | asyncio.Future[list[Delta]]:
    """The first batch; for a stream, the wait for it when it takes longer than
    `FIRST_DELTAS_WAIT` (the headers go out meanwhile)."""
    pending: asyncio.Future[list[Delta]] = asyncio.ensure_future(anext(aiter(generation)))
    done, _ = await asyncio.wait({pending}, timeout=FIRST_DELTAS_WAIT if stream else None)
    if not done:
        return pending
    try:
        return pending.result()
    except StopAsyncIteration:
        return []


async def start(request: Request, task: ChatTask | CompletionTask) -> Run:
    """Lease, plan and start task for request; see the module's docstring."""
    return await begin(request.app, task, lambda generation: _watch_disconnect(request, generation))


async def begin(app: Any, task: ChatTask | CompletionTask,
                watch: Callable[[Generation], Awaitable[None]] | None = None) -> Run:
    """Lease, plan and start task on app's registry; watch (the client going away) runs
    beside the generation until the run closes. A realtime session starts its answers here."""
    stack = contextlib.AsyncExitStack()
    observation = app.state.metrics.observe(task.model)
    try:
        lease = await stack.enter_async_context(app.state.registry.lease(task.model, task.task))
        slots = lease.engine.slots
        if slots is not None and task.options.n > slots:
            # The choices of one prompt are decoded side by side, each in a slot of its own
            # (several prompts take their turns, so only n is bounded).
            raise BadRequest(f"n={task.options.n} asks for more choices than this model decodes at "
                             f"once ({slots}, PARALLEL_REQUESTS). Ask for fewer, or raise "
                             "PARALLEL_REQUESTS.", param="n")
        defaults = app.state.registry.defaults
        if isinstance(task, ChatTask):
            call = plan_chat(lease.entry, task, defaults)
        else:
            call = plan_completion(lease.entry, task, defaults)
        generation = Generation(lease, call, timeout=task.options.timeout or app.state.settings.request_timeout,
                                stopping=app.state.stopping)
        stack.push_async_callback(generation.close)
        if watch is not None:
            watcher = asyncio.create_task(watch(generation))
            stack.callback(watcher.cancel)
        shutdown = asyncio.create_task(_end_at_shutdown(app.state.stopping, generation))
        stack.callback(shutdown.cancel)
        first = await _first_deltas(generation, task.options.stream)
        if isinstance(first, list):
            observation.chunk(_tokens(first))
    except BaseException:
        await stack.aclose()
        observation.finish(None, "error")
        raise
    return Run(generation, lease.entry, first, observation, stack)
