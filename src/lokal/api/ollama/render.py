"""Deltas into Ollama's answers: NDJSON objects while streaming, one object when not.

`OllamaRenderer` is the family's `api.respond.Renderer`. Ollama sends whole tool
calls with `arguments` as an object, so a call goes out when `api.assembly` closes
it (the next part starts, or the answer ends), its arguments read by the
assembly's rule. The final object carries the counts and the durations in
nanoseconds, measured here: total from the request's start, load the time spent
loading the model for this request, prompt eval up to the first token (less the
load), eval from the first token to the last.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from fastapi.responses import JSONResponse

from lokal.api.assembly import Assembler, Closed, Event, Grew, Part
from lokal.api.respond import ndjson
from lokal.api.ollama.errors import ollama_message
from lokal.errors import LokalError
from lokal.tasks import Delta, Usage


def now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


class Timer:
    """The request's clock: start, load done, first token, end (perf_counter_ns)."""

    def __init__(self) -> None:
        self.start = time.perf_counter_ns()
        self.load_ns = 0
        self.first: int | None = None

    def first_token(self) -> None:
        if self.first is None:
            self.first = time.perf_counter_ns()

    def metrics(self, usage: Usage) -> dict[str, int]:
        end = time.perf_counter_ns()
        first = self.first if self.first is not None else end
        return {
            "total_duration": end - self.start,
            "load_duration": self.load_ns,
            "prompt_eval_count": usage.prompt_tokens,
            "prompt_eval_duration": max(0, first - self.start - self.load_ns),
            "eval_count": usage.completion_tokens,
            "eval_duration": end - first,
        }


def _call(part: Part) -> dict[str, Any]:
    call: dict[str, Any] = {"function": {"index": part.position, "name": part.name, "arguments": part.input}}
    if part.call_id:
        call["id"] = part.call_id
    return call


class OllamaRenderer:
    """The objects of one answer. `kind` is "chat" (a `message`) or "generate" (`response`)."""

    media_type = "application/x-ndjson"

    def __init__(self, kind: str, model: str, timer: Timer, top_logprobs: int | None = None) -> None:
        self.top_logprobs = top_logprobs  # None: the request asked for no logprobs
        self.kind = kind
        self.model = model
        self.timer = timer
        self.assembler = Assembler()

    def _object(self, text: str, thinking: str, calls: list[dict[str, Any]], done: bool) -> dict[str, Any]:
        obj: dict[str, Any] = {"model": self.model, "created_at": now()}
        if self.kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if thinking:
                message["thinking"] = thinking
            if calls:
                message["tool_calls"] = calls
            obj["message"] = message
        else:
            obj["response"] = text
            if thinking:
                obj["thinking"] = thinking
            if calls:
                obj["tool_calls"] = calls
        obj["done"] = done
        return obj

    @staticmethod
    def _take(events: list[Event]) -> tuple[str, str, list[dict[str, Any]]]:
        """The text, thinking and completed tool calls these events add."""
        text: list[str] = []
        thinking: list[str] = []
        calls: list[dict[str, Any]] = []
        for event in events:
            part = event.part
            if isinstance(event, Closed):
                if part.kind == "tool_call":
                    calls.append(_call(part))
            elif isinstance(event, Grew) and part.kind != "tool_call":
                (text if part.kind == "text" else thinking).append(event.text)
        return "".join(text), "".join(thinking), calls

    @property
    def done_reason(self) -> str:
        # Ollama ends an answer that called tools with "stop", as any other.
        return "length" if self.assembler.finish == "length" else "stop"

    def _final(self, text: str, thinking: str, calls: list[dict[str, Any]], usage: Usage) -> dict[str, Any]:
        obj = self._object(text, thinking, calls, True)
        obj["done_reason"] = self.done_reason
        obj.update(self.timer.metrics(usage))
        return obj

    # Renderer ---------------------------------------------------------------

    def start(self) -> bytes:
        return b""

    def feed(self, deltas: list[Delta]) -> bytes:
        """One object for all a batch of deltas says (none if nothing)."""
        text, thinking, calls = self._take(self.assembler.feed(deltas))
        if not (text or thinking or calls):
            return b""
        self.timer.first_token()
        return ndjson(self._logprobs(self._object(text, thinking, calls, False), deltas))

    def _logprobs(self, obj: dict[str, Any], deltas: list[Delta]) -> dict[str, Any]:
        """Ollama's `logprobs` of the deltas' tokens (the engine's entries have its shape:
        token, logprob, bytes, top_logprobs), when the request asked for them."""
        if self.top_logprobs is not None:
            obj["logprobs"] = [{**entry, "top_logprobs": (entry.get("top_logprobs") or [])[:self.top_logprobs]}
                               for delta in deltas for entry in delta.logprobs or ()]
        return obj

    def keepalive(self) -> bytes:
        return ndjson(self._object("", "", [], False))

    def end(self, usage: Usage) -> bytes:
        _text, _thinking, calls = self._take(self.assembler.close())
        return ndjson(self._final("", "", calls, usage))

    def fail(self, err: LokalError) -> bytes:
        return ndjson({"error": ollama_message(err)})

    def whole(self, deltas: list[Delta], usage: Usage) -> JSONResponse:
        text, thinking, calls = self._take(self.assembler.feed(deltas) + self.assembler.close())
        return JSONResponse(self._logprobs(self._final(text, thinking, calls, usage), deltas))
