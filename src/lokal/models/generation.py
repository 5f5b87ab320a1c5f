"""Running a chat or completion task on a leased model: engine chunks in, `Delta`s out.

Engines block a thread and call a sink per chunk. `engine_chunks` runs that on
its own thread and hands the chunks to the event loop, every chunk waiting at
once (one wake-up for all of them when the loop falls behind, as with many
concurrent streams); setting the cancel event (client gone) makes the sink
answer "stop" so the engine frees its slot within one token. `Generation`
turns engine chunks, in whichever of the engine's shapes, into `Delta`s: text,
tool-call parts (parsed by the engine from a model's own call format, or read
incrementally from lokal's JSON envelope), finish reasons,
and the usage summed over the engine's tasks. Streamed and whole answers of
every API family are made from the same deltas.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from lokal import threadnames
from lokal.engines.base import ChunkSink
from lokal.errors import EngineStuck, LokalError, RequestTimeout, ShuttingDown
from lokal.models.functions import EnvelopeReader, new_call_id
from lokal.models.localai_functions.replies import ReplyReader
from lokal.models.prompting import EngineCall
from lokal.models.stops import StopScanner
from lokal.tasks import Delta, PromptProgress, ToolCallDelta, Usage

_DONE = object()


class ClientGone(LokalError):
    """The client left before its request reached the engine (nginx's 499)."""

    status = 499
    type = "client_closed_request"

    def __init__(self) -> None:
        super().__init__("The client closed the connection before the request was served.")


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


Batch = list[dict[str, Any]]


class _Handover:
    """Items from an engine thread to the event loop's queue.

    Items the engine thread has made that the event loop has not taken yet wait in a list.
    The loop is woken once for all of them (a wake-up is a syscall and a loop turn): while
    it has not run the hand-over, further items just join the list.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any],
                 cancel: threading.Event) -> None:
        self._loop, self._queue, self._cancel = loop, queue, cancel
        self._pending: list[Any] = []
        self._lock = threading.Lock()

    def _hand_over(self) -> None:  # on the event loop
        with self._lock:
            items = self._pending[:]
            self._pending.clear()
        for item in items:
            self._queue.put_nowait(item)

    def put(self, item: Any) -> None:  # on the engine thread
        with self._lock:
            self._pending.append(item)
            if len(self._pending) > 1:
                return  # a hand-over is already on its way
        try:
            self._loop.call_soon_threadsafe(self._hand_over)
        except RuntimeError:  # the loop is gone (shutdown): nobody is listening
            self._cancel.set()


async def _next_batch(queue: asyncio.Queue[Any]) -> tuple[list[Any], Any]:
    """Every item waiting (at least one) up to the end or a failure; and that end, or None."""
    batch: list[Any] = [await queue.get()]
    while not queue.empty():
        batch.append(queue.get_nowait())
    for position, item in enumerate(batch):  # the end, or an interruption, ends the batch
        if item is _DONE or isinstance(item, _Failure):
            return batch[:position], item
    return batch, None


async def engine_chunks(run: Callable[[ChunkSink], None], cancel: threading.Event,
                        on_done: Callable[[], None] | None = None,
                        queue: asyncio.Queue[Any] | None = None,
                        on_start: Callable[[], None] | None = None) -> AsyncIterator[Batch]:
    """Run a blocking engine call on a thread; yield its chunks here, in batches of
    those that arrived since the last one was taken.

    on_done runs on the event loop when the engine call has returned, however
    the response ended: only then is the model free of this request.
    """
    loop = asyncio.get_running_loop()
    if queue is None:
        queue = asyncio.Queue()
    handover = _Handover(loop, queue, cancel)

    def sink(chunk: dict[str, Any]) -> bool:
        if cancel.is_set():
            return True
        handover.put(chunk)
        return cancel.is_set()

    def work() -> None:
        threadnames.set_name("lokal-generate")
        try:
            run(sink)
        except BaseException as exc:  # noqa: BLE001 - handed to the event loop
            handover.put(_Failure(exc))
        else:
            handover.put(_DONE)
        finally:
            if on_done is not None:
                try:
                    loop.call_soon_threadsafe(on_done)
                except RuntimeError:  # the loop is gone: nothing left to release
                    pass

    if on_start is not None:
        on_start()  # from here on, on_done runs when the engine call returns
    threading.Thread(target=work, name="lokal-generate", daemon=True).start()
    try:
        while True:
            batch, end = await _next_batch(queue)
            if batch:
                yield batch
            if end is _DONE:
                return
            if isinstance(end, _Failure):
                raise end.exc
    finally:
        cancel.set()


async def admit_until(lease: Any, n: int, stopped: asyncio.Event,
                      deadline: float | None) -> Callable[[], None] | None:
    """Wait for n of a lease's engine slots until stopped is set or the loop's clock passes
    deadline: the function that gives the slots back, or None when none were granted."""
    admit = asyncio.ensure_future(lease.admit(n))
    stop = asyncio.ensure_future(stopped.wait())
    left = None if deadline is None else max(0.0, deadline - asyncio.get_running_loop().time())
    try:
        await asyncio.wait({admit, stop}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        if not admit.done():
            admit.cancel()
    if admit.done() and not admit.cancelled():
        return admit.result()  # type: ignore[no-any-return]
    return None


async def guarded(chunks: AsyncIterator[Batch], cancel: threading.Event, *,
                  timeout: float | None, busy: float | None, on_stuck: Callable[[], None],
                  stopping: asyncio.Event | None = None,
                  deadline: float | None = None) -> AsyncIterator[Batch]:
    """Batches of chunks, ending the request past its timeout, when the engine goes quiet
    for longer than the busy watchdog allows (then on_stuck retires the model), or when
    the server's shutdown grace period is over."""
    loop = asyncio.get_running_loop()
    if deadline is None and timeout:
        deadline = loop.time() + timeout
    try:
        while True:
            if stopping is not None and stopping.is_set():
                cancel.set()
                raise ShuttingDown()
            left = deadline - loop.time() if deadline is not None else None
            # Whichever limit comes first decides what a silence means.
            by_deadline = left is not None and (busy is None or left <= busy)
            wait = max(0.0, left) if by_deadline else busy  # type: ignore[type-var]
            try:
                if wait is not None:
                    batch = await asyncio.wait_for(anext(chunks), wait)
                else:
                    batch = await anext(chunks)
            except StopAsyncIteration:
                return
            except TimeoutError:
                cancel.set()
                if by_deadline:
                    raise RequestTimeout(timeout or 0) from None
                on_stuck()
                raise EngineStuck(busy or 0) from None
            yield batch
    finally:
        await chunks.aclose()


class Generation:
    """One chat or completion running on a leased model, as batches of `Delta`s.

    Iterate it (`async for deltas in generation`), then read `usage`. `close()`
    stops the engine (if it is still going) and gives the model back once the
    engine has returned; it is safe to call more than once.
    """

    def __init__(self, lease: Any, call: EngineCall, *, timeout: float | None,
                 stopping: asyncio.Event | None = None) -> None:
        self.call = call
        self.model = lease.entry.name
        self.cancel = threading.Event()
        self._stopped = asyncio.Event()  # the same, for waits on the event loop
        self._lease = lease
        self._timeout = timeout
        self._deadline = asyncio.get_running_loop().time() + timeout if timeout else None
        self._give_slots: Callable[[], None] = lambda: None
        self._interrupted: BaseException | None = None
        self._queue: asyncio.Queue[Any] = asyncio.Queue()  # the engine thread's chunks
        self._readers: dict[int, EnvelopeReader] = {}
        self._shapers: dict[int, ReplyReader] = {}  # LocalAI's reply handling, per choice
        self._calls_seen: set[tuple[int, int]] = set()  # (choice, position) of native calls begun
        self._prompt_sum = 0
        self._completion_sum = 0
        self._cached_sum: int | None = None
        self._reported = False
        self.prompt_seconds: float | None = None  # the engine's own prompt time, when it says
        # The request's stop sequences, matched here (EngineCall.stops): the engine is
        # stopped at a match and the usage is counted here, since it then reports none.
        self._scanner = StopScanner(call.stops) if call.stops else None
        self._cut = False
        self._own_usage: Usage | None = None
        self._generated: dict[int, int] = {}  # tokens seen per choice
        self.progress: dict[int, PromptProgress] = {}  # the engine's prompt progress per choice
        self._n = max(1, call.n)
        run = {"chat": lease.engine.chat, "infill": lease.engine.infill}.get(call.mode, lease.engine.complete)
        body = call.body
        streamed = call.streamed
        engine_done = lease.hold()

        def done() -> None:  # on the event loop, once the engine call has returned
            self._give_slots()
            engine_done()

        self._done = done
        self._engine_started = False

        def started() -> None:
            self._engine_started = True

        self._chunks = guarded(
            engine_chunks(lambda sink: run(body, sink, streamed=streamed), self.cancel, on_done=done,
                          queue=self._queue, on_start=started),
            self.cancel, timeout=timeout, busy=lease.busy_timeout, on_stuck=lease.retire,
            stopping=stopping, deadline=self._deadline)
        self._closed = False
        self._iter = self._deltas()

    def __aiter__(self) -> AsyncIterator[list[Delta]]:
        return self._iter

    async def _admit(self) -> None:
        """Wait for the engine's slots (the request's deadline counts; a client that
        leaves meanwhile never reaches the engine)."""
        give = await admit_until(self._lease, self.call.n, self._stopped, self._deadline)
        if give is not None:
            self._give_slots = give
            if not self.cancel.is_set():
                return
            give()
        if self._interrupted is not None:
            raise self._interrupted
        if self.cancel.is_set():
            raise ClientGone()
        raise RequestTimeout(self._timeout or 0)

    async def _deltas(self) -> AsyncIterator[list[Delta]]:
        await self._admit()
        async for batch in self._chunks:
            out: list[Delta] = []
            for chunk in batch:
                self._read(chunk, out)
                if self._cut:
                    break
            if out:
                yield out
            if self._cut:
                self._own_usage = await self._count_usage()
                return

    async def _count_usage(self) -> Usage:
        """The usage of a run lokal stopped at a stop sequence: the prompt as the engine
        reported its size (or as its tokenizer counts it), the tokens generated so far."""
        progress = self.progress.get(0)
        if progress is not None:
            return Usage(progress.total, self._generated.get(0, 0), progress.cache)
        try:
            prompt = await asyncio.to_thread(self._lease.engine.count_tokens, self.call.body)
        except Exception:  # noqa: BLE001 - a count is not worth failing a finished answer for
            prompt = None
        return Usage(prompt or 0, self._generated.get(0, 0), None)

    def stop(self) -> None:
        """The client went away: the engine stops within a token, a request still
        waiting for a slot never starts."""
        self.cancel.set()
        self._stopped.set()

    def interrupt(self, exc: BaseException) -> None:
        """End the generation now with exc (on the event loop): the engine is told to
        stop, and whoever waits for the next deltas gets exc at once, not after the
        engine's next token (the server's shutdown grace is over, say)."""
        self._interrupted = exc
        self.stop()
        self._queue.put_nowait(_Failure(exc))

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.cancel.set()
            await self._iter.aclose()
            await self._chunks.aclose()
            if not self._engine_started:
                # The engine was never asked (no slot in time, the client left, the deadline
                # had passed): nothing will call done, so the slots and the model go back now.
                self._done()

    @property
    def usage(self) -> Usage:
        """The answer's usage, a prompt counted once however many choices it has
        (the engine runs each choice as a task of its own and reports the prompt
        for every one)."""
        if self._own_usage is not None:
            return self._own_usage
        prompt = round(self._prompt_sum / self._n)
        cached = None if self._cached_sum is None else round(self._cached_sum / self._n)
        return Usage(prompt, self._completion_sum, cached)

    @property
    def partial_usage(self) -> Usage | None:
        """What is known of the usage of a run that ended without the engine's count
        (the client left): the prompt's size from its progress, the tokens seen."""
        progress = self.progress.get(0)
        if progress is None:
            return None
        return Usage(progress.total, self.tokens_seen, progress.cache)

    @property
    def known_usage(self) -> Usage | None:
        """The engine's count, or for a run cut short what is known of it (None: nothing)."""
        return self.usage if self.reported_usage else self.partial_usage

    @property
    def tokens_seen(self) -> int:
        """Tokens generated so far, every choice (what a run cut short is known to have made)."""
        return sum(self._generated.values())

    @property
    def reported_usage(self) -> bool:
        return self._reported or self._own_usage is not None

    def _read(self, chunk: dict[str, Any], out: list[Delta]) -> None:
        progress = chunk.get("prompt_progress")
        choices = chunk.get("choices") or ()
        if progress and not choices:  # llama.cpp's progress comes alone (engines/llamacpp.py): choice 0's
            choices = ({"index": 0, "delta": {}},)
        for choice in choices:
            delta = self._delta(choice)
            if progress:
                delta.progress = self.progress[delta.index] = PromptProgress(
                    int(progress.get("total") or 0), int(progress.get("cache") or 0),
                    int(progress.get("processed") or 0), float(progress.get("time_ms") or 0))
            elif _says_token(choice):
                self._generated[delta.index] = self._generated.get(delta.index, 0) + 1
            out.append(delta)
            if self._cut:
                return
        timings = chunk.get("timings")
        if timings and timings.get("prompt_ms") is not None:
            seconds = float(timings["prompt_ms"]) / 1000
            self.prompt_seconds = seconds if self.prompt_seconds is None else min(self.prompt_seconds, seconds)
        usage = chunk.get("usage")
        if usage:
            self._reported = True
            self._prompt_sum += int(usage.get("prompt_tokens") or 0)
            self._completion_sum += int(usage.get("completion_tokens") or 0)
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
            if cached is not None:
                self._cached_sum = (self._cached_sum or 0) + int(cached)

    def _delta(self, choice: dict[str, Any]) -> Delta:
        index = int(choice.get("index", 0))
        finish = choice.get("finish_reason")
        logprobs = choice.get("logprobs")
        delta = choice.get("delta")
        calls: list[ToolCallDelta] | None = None
        reasoning = ""
        if delta is not None:  # the engine's chat shape
            text = delta.get("content") or ""
            reasoning = delta.get("reasoning_content") or ""
            if delta.get("tool_calls"):
                calls = [self._native_call(index, c) for c in delta["tool_calls"]
                         if self.call.parallel_calls or int(c.get("index", 0)) == 0] or None
            entries = logprobs.get("content") if isinstance(logprobs, dict) else None
        else:  # a text completion
            text = choice.get("text") or ""
            entries = (logprobs.get("content") if isinstance(logprobs, dict) else logprobs) or None
        if self.call.functions is not None:
            reader = self._readers.setdefault(index, EnvelopeReader())
            text, envelope_calls = reader.feed(text) if text else ("", [])
            if envelope_calls:
                calls = envelope_calls
            if finish == "stop" and reader.is_call:
                finish = "tool_calls"
        elif self.call.reply is not None:
            shaper = self._shapers.setdefault(index, ReplyReader(self.call.reply))
            text, parsed = shaper.feed(text, finish is not None, engine_calls=bool(calls))
            calls = calls or parsed
        if calls and finish == "stop":
            finish = "tool_calls"
        stop_sequence = None
        scanner = self._scanner
        if scanner is not None and index == 0:
            text = scanner.feed(text, final=finish is not None)
            if scanner.matched is not None:
                finish, stop_sequence = "stop", scanner.matched
                self._cut = True
                self.cancel.set()  # the engine stops within a token
        return Delta(index, text, reasoning, calls, entries, finish, stop_sequence)

    def _native_call(self, choice: int, call: dict[str, Any]) -> ToolCallDelta:
        """A part of a call the engine parsed from the model's own format: `index` is the
        call's position among the turn's parallel calls; its first part gets an id if
        the engine gave none, so every API family can name it."""
        function = call.get("function") or {}
        position = int(call.get("index", 0))
        call_id = call.get("id") or None
        if (choice, position) not in self._calls_seen:
            self._calls_seen.add((choice, position))
            call_id = call_id or new_call_id()
        return ToolCallDelta(position, id=call_id, name=function.get("name") or None,
                             arguments=function.get("arguments") or "")


def _says_token(choice: dict[str, Any]) -> bool:
    """Whether an engine choice chunk carries a generated token the delta does not show
    (text held back for a possible stop sequence, or an envelope's JSON)."""
    delta = choice.get("delta")
    if delta is not None:
        return bool(delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls"))
    return bool(choice.get("text"))
