"""Deltas into Ollama's answers: NDJSON objects while streaming, one object when not.

Ollama sends whole tool calls with `arguments` as an object, so a call's streamed
argument text is gathered and parsed once the call is complete (the next call
starts, or the answer ends). The final object carries the counts and the
durations in nanoseconds, measured here: total from the request's start, load
the time spent loading the model for this request, prompt eval up to the first
token (less the load), eval from the first token to the last.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any

import orjson

from lokal.errors import ServerError
from lokal.tasks import Delta, Usage


def now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def ndjson(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj) + b"\n"


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


class _Call:
    __slots__ = ("id", "name", "arguments", "position")

    def __init__(self, position: int) -> None:
        self.position = position
        self.id: str | None = None
        self.name = ""
        self.arguments = ""

    def wire(self) -> dict[str, Any]:
        try:
            arguments = json.loads(self.arguments) if self.arguments.strip() else {}
        except ValueError:
            raise ServerError(f"the model's call of {self.name!r} has arguments that are not JSON "
                              "(cut off by num_predict?)") from None
        if not isinstance(arguments, dict):
            raise ServerError(f"the model's call of {self.name!r} has arguments that are not a JSON object")
        call: dict[str, Any] = {"function": {"index": self.position, "name": self.name, "arguments": arguments}}
        if self.id:
            call["id"] = self.id
        return call


class Shaper:
    """The objects of one answer. `kind` is "chat" (a `message`) or "generate" (`response`)."""

    def __init__(self, kind: str, model: str, timer: Timer) -> None:
        self.kind = kind
        self.model = model
        self.timer = timer
        self.finish: str | None = None
        self._call: _Call | None = None

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

    def _take(self, deltas: list[Delta]) -> tuple[str, str, list[dict[str, Any]]]:
        """The text, thinking and completed tool calls these deltas add."""
        text, thinking, calls = [], [], []
        for delta in deltas:
            if delta.text:
                text.append(delta.text)
            if delta.reasoning:
                thinking.append(delta.reasoning)
            for part in delta.tool_calls or ():
                if self._call is None or part.position != self._call.position:
                    if self._call is not None:
                        calls.append(self._call.wire())
                    self._call = _Call(part.position)
                if part.id:
                    self._call.id = part.id
                if part.name:
                    self._call.name += part.name
                self._call.arguments += part.arguments
            if delta.finish_reason is not None:
                self.finish = delta.finish_reason
        if self.finish is not None and self._call is not None:
            calls.append(self._call.wire())
            self._call = None
        return "".join(text), "".join(thinking), calls

    def lines(self, deltas: list[Delta]) -> bytes:
        """The NDJSON of a batch of deltas: one object for all they say (none if nothing)."""
        text, thinking, calls = self._take(deltas)
        if not (text or thinking or calls):
            return b""
        self.timer.first_token()
        return ndjson(self._object(text, thinking, calls, False))

    @property
    def done_reason(self) -> str:
        # Ollama ends an answer that called tools with "stop", as any other.
        return "length" if self.finish == "length" else "stop"

    def final(self, usage: Usage) -> dict[str, Any]:
        """The closing object of a stream."""
        calls = [self._call.wire()] if self._call is not None else []
        self._call = None
        obj = self._object("", "", calls, True)
        obj["done_reason"] = self.done_reason
        obj.update(self.timer.metrics(usage))
        return obj

    def whole(self, deltas: list[Delta], usage: Usage) -> dict[str, Any]:
        """The one object of an answer that is not streamed."""
        text, thinking, calls = self._take(deltas)
        if self._call is not None:
            calls.append(self._call.wire())
            self._call = None
        obj = self._object(text, thinking, calls, True)
        obj["done_reason"] = self.done_reason
        obj.update(self.timer.metrics(usage))
        return obj
