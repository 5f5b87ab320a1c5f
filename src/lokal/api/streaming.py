"""Engine chunks to OpenAI answers: the thread bridge, chunk shaping, SSE, aggregation.

Engines block a thread and call a sink per chunk. `engine_chunks` runs that on
its own thread and yields the chunks to the event loop, every chunk that is
waiting at once (one wake-up and one socket write for all of them when the
event loop falls behind, as with many concurrent streams); setting the cancel event
(client gone) makes the sink answer "stop" so the engine frees its slot within
one token. Non-streaming answers are assembled from the same chunks, so both
kinds of request stop the same way when their client disconnects.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from lokal.backends.base import ChunkSink
from lokal.errors import EngineStuck, RequestTimeout, ShuttingDown

_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


Batch = list[dict[str, Any]]


async def guarded(chunks: AsyncIterator[Batch], cancel: threading.Event, *,
                  timeout: float | None, busy: float | None, on_stuck: Callable[[], None],
                  stopping: asyncio.Event | None = None) -> AsyncIterator[Batch]:
    """Batches of chunks, ending the request past its timeout, when the engine goes quiet for
    longer than the busy watchdog allows (then on_stuck retires the model), or when
    the server's shutdown grace period is over."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout if timeout else None
    while True:
        if stopping is not None and stopping.is_set():
            cancel.set()
            raise ShuttingDown()
        waits = [w for w in (busy, deadline - loop.time() if deadline else None) if w is not None]
        try:
            if waits:
                batch = await asyncio.wait_for(anext(chunks), max(0.0, min(waits)))
            else:
                batch = await anext(chunks)
        except StopAsyncIteration:
            return
        except TimeoutError:
            cancel.set()
            if deadline is not None and loop.time() >= deadline:
                raise RequestTimeout(timeout or 0) from None
            on_stuck()
            raise EngineStuck(busy or 0) from None
        yield batch


async def engine_chunks(run: Callable[[ChunkSink], None], cancel: threading.Event,
                        on_done: Callable[[], None] | None = None) -> AsyncIterator[Batch]:
    """Run a blocking engine call on a thread; yield its chunks here, in batches of
    those that arrived since the last one was taken.

    on_done runs on the event loop when the engine call has returned, however
    the response ended: only then is the model free of this request.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()

    def put(item: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is gone (shutdown): nobody is listening
            cancel.set()

    def sink(chunk: dict[str, Any]) -> bool:
        if cancel.is_set():
            return True
        put(chunk)
        return cancel.is_set()

    def work() -> None:
        try:
            run(sink)
        except BaseException as exc:  # noqa: BLE001 - handed to the event loop
            put(_Failure(exc))
        else:
            put(_DONE)
        finally:
            if on_done is not None:
                try:
                    loop.call_soon_threadsafe(on_done)
                except RuntimeError:  # the loop is gone: nothing left to release
                    pass

    threading.Thread(target=work, name="lokal-generate", daemon=True).start()
    try:
        while True:
            batch: list[Any] = [await queue.get()]
            while not queue.empty():
                batch.append(queue.get_nowait())
            end = batch.pop() if batch[-1] is _DONE or isinstance(batch[-1], _Failure) else None
            if batch:
                yield batch
            if end is _DONE:
                return
            if isinstance(end, _Failure):
                raise end.exc
    finally:
        cancel.set()


def sse(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class Shaper:
    """Rewrites engine chunks into the OpenAI chunks of one response.

    `kind` is what the client asked for ("chat" or "completion"); `source` is
    what the engine ran. A chat rendered by LocalAI templates runs as a
    completion and is reshaped into chat chunks here. Usage is summed over the
    engine's tasks and sent last, by `usage_chunk`, when the client asks for it.
    """

    def __init__(self, kind: str, source: str, model: str, choices_per_prompt: int = 1) -> None:
        self.kind = kind
        self.source = source
        self.model = model
        # The engine runs each of a prompt's n choices as a task of its own and
        # reports the prompt's tokens for every one; OpenAI counts them once.
        self.n = max(1, choices_per_prompt)
        prefix = "chatcmpl-" if kind == "chat" else "cmpl-"
        self.id = prefix + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.object = "chat.completion.chunk" if kind == "chat" else "text_completion"
        self._started: set[int] = set()
        self._reported = False  # the engine sent usage
        self._prompt_sum = 0
        self._completion_sum = 0
        self._cached_sum: int | None = None

    def chunk(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {"id": self.id, "object": self.object, "created": self.created,
                                 "model": self.model, "choices": choices}
        if usage is not None:
            chunk["usage"] = usage
        return chunk

    def shape(self, engine_chunk: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        choices = []
        for choice in engine_chunk.get("choices") or []:
            choices.extend(self._choice(choice))
        if choices:
            out.append(self.chunk(choices))
        usage = engine_chunk.get("usage")
        if usage:
            self._add_usage(usage)
        return out

    def _add_usage(self, usage: dict[str, Any]) -> None:
        """Sum usage over the engine's tasks (one per prompt and choice)."""
        self._reported = True
        self._prompt_sum += int(usage.get("prompt_tokens") or 0)
        self._completion_sum += int(usage.get("completion_tokens") or 0)
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        if cached is not None:
            self._cached_sum = (self._cached_sum or 0) + int(cached)

    @property
    def usage(self) -> dict[str, Any] | None:
        """The answer's usage, a prompt counted once however many choices it has."""
        if not self._reported:
            return None
        prompt = round(self._prompt_sum / self.n)
        total: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": self._completion_sum,
                                 "total_tokens": prompt + self._completion_sum}
        if self._cached_sum is not None:
            total["prompt_tokens_details"] = {"cached_tokens": round(self._cached_sum / self.n)}
        return total

    def usage_chunk(self) -> dict[str, Any]:
        """The closing chunk of a stream that asked for usage."""
        return self.chunk([], self.usage or {"prompt_tokens": 0, "completion_tokens": 0,
                                              "total_tokens": 0})

    def _choice(self, choice: dict[str, Any]) -> list[dict[str, Any]]:
        index = int(choice.get("index", 0))
        finish = choice.get("finish_reason")
        if self.kind == "completion":
            return [{"index": index, "text": choice.get("text") or "",
                     "logprobs": choice.get("logprobs"), "finish_reason": finish}]
        if self.source == "chat":
            delta = dict(choice.get("delta") or {})
            if index not in self._started:
                self._started.add(index)
                delta.setdefault("role", "assistant")
            if delta.get("role") == "assistant" and delta.get("content") is None and "tool_calls" not in delta:
                delta["content"] = ""
            shaped = {"index": index, "delta": delta, "logprobs": choice.get("logprobs"),
                      "finish_reason": finish}
            return [shaped]
        # A chat that the engine ran as a text completion.
        out = []
        if index not in self._started:
            self._started.add(index)
            out.append({"index": index, "delta": {"role": "assistant", "content": ""},
                        "logprobs": None, "finish_reason": None})
        text = choice.get("text") or ""
        if text or finish:
            out.append({"index": index, "delta": {"content": text} if text else {},
                        "logprobs": None, "finish_reason": finish})
        return out


class Aggregator:
    """Assembles a whole (non-streaming) answer from shaped chunks."""

    def __init__(self, shaper: Shaper) -> None:
        self.shaper = shaper
        self._choices: dict[int, dict[str, Any]] = {}

    def add(self, chunk: dict[str, Any]) -> None:
        for choice in chunk["choices"]:
            index = choice["index"]
            if self.shaper.kind == "completion":
                slot = self._choices.setdefault(index, {"index": index, "text": "", "logprobs": None,
                                                        "finish_reason": None})
                slot["text"] += choice.get("text") or ""
                _merge_logprobs(slot, choice.get("logprobs"))
            else:
                slot = self._choices.setdefault(index, {
                    "index": index, "message": {"role": "assistant", "content": None},
                    "logprobs": None, "finish_reason": None})
                _merge_delta(slot["message"], choice.get("delta") or {})
                _merge_logprobs(slot, choice.get("logprobs"))
            if choice.get("finish_reason"):
                slot["finish_reason"] = choice["finish_reason"]

    def result(self) -> dict[str, Any]:
        shaper = self.shaper
        choices = [self._choices[i] for i in sorted(self._choices)]
        for choice in choices:
            message = choice.get("message")
            if message is not None and message.get("content") is None and not message.get("tool_calls"):
                message["content"] = ""
        usage = shaper.usage or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        return {
            "id": shaper.id,
            "object": "chat.completion" if shaper.kind == "chat" else "text_completion",
            "created": shaper.created,
            "model": shaper.model,
            "choices": choices,
            "usage": usage,
        }


def _merge_logprobs(slot: dict[str, Any], logprobs: Any) -> None:
    if not logprobs:
        return
    if slot["logprobs"] is None:
        slot["logprobs"] = {"content": []}
    slot["logprobs"]["content"].extend(logprobs.get("content") or [])


def _merge_delta(message: dict[str, Any], delta: dict[str, Any]) -> None:
    for key in ("content", "reasoning_content"):
        if delta.get(key):
            message[key] = (message.get(key) or "") + delta[key]
    for call in delta.get("tool_calls") or []:
        calls = message.setdefault("tool_calls", [])
        position = call.get("index", len(calls))
        while len(calls) <= position:
            calls.append({"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        target = calls[position]
        if call.get("id"):
            target["id"] = call["id"]
        function = call.get("function") or {}
        target["function"]["name"] += function.get("name") or ""
        target["function"]["arguments"] += function.get("arguments") or ""
