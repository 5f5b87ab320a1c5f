"""Deltas into an Anthropic Messages answer: its stream events and the whole message.

`MessageRenderer` follows one generation and writes the events the Anthropic
SDKs parse (`message_start`, per block `content_block_start` / `_delta` /
`_stop`, `message_delta`, `message_stop`); the whole message is the state those
events built. `StopScanner` finds the request's stop sequences in the text
itself, because the engine strips a stop sequence without saying which one
ended the answer, and Anthropic's answer names it.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from typing import Any

from lokal.api.generation import sse
from lokal.errors import ContextOverflowError, LokalError
from lokal.tasks import Delta, Usage

Event = tuple[str, dict[str, Any]]

#: Anthropic's error type for each status (https://docs.anthropic.com/en/api/errors).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def anthropic_envelope(err: LokalError) -> dict[str, Any]:
    message = err.message
    if isinstance(err, ContextOverflowError):
        # Anthropic's words: Claude Code reads them (and the counts) to compact the conversation.
        message = f"prompt is too long: {err.prompt_tokens} tokens > {err.context} maximum"
    return {"type": "error", "error": {"type": error_type(err.status), "message": message}}


def usage_object(usage: Usage) -> dict[str, Any]:
    """Anthropic counts cached prompt tokens apart from the rest of the input."""
    cached = usage.cached_tokens or 0
    return {"input_tokens": max(0, usage.prompt_tokens - cached),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached,
            "output_tokens": usage.completion_tokens}


class MessageRenderer:
    """The events and the message of one Messages request."""

    def __init__(self, model: str) -> None:
        self.id = "msg_" + uuid.uuid4().hex
        self.model = model
        self.blocks: list[dict[str, Any]] = []
        self._open: int | None = None
        self._calls: dict[int, int] = {}  # tool-call position -> block index
        self._arguments: dict[int, str] = {}  # block index -> the call's JSON text so far
        self.finish: str | None = None
        self.stop_sequence: str | None = None

    def start(self) -> list[Event]:
        message = {"id": self.id, "type": "message", "role": "assistant", "model": self.model,
                   "content": [], "stop_reason": None, "stop_sequence": None,
                   # the prompt is counted when it has run: message_delta carries the counts
                   "usage": {"input_tokens": 0, "cache_creation_input_tokens": 0,
                             "cache_read_input_tokens": 0, "output_tokens": 0}}
        return [("message_start", {"type": "message_start", "message": message}), ("ping", {"type": "ping"})]

    def feed(self, deltas: list[Delta]) -> list[Event]:
        events: list[Event] = []
        for delta in deltas:
            if delta.index != 0:
                continue
            if delta.reasoning:
                events += self._text("thinking", delta.reasoning)
            if delta.text:
                events += self._text("text", delta.text)
            for call in delta.tool_calls or ():
                index = self._calls.get(call.position)
                if index is None:
                    events += self._close()
                    index = len(self.blocks)
                    self._calls[call.position] = index
                    call_id = call.id or "toolu_" + uuid.uuid4().hex[:24]
                    if call_id.startswith("call_"):
                        call_id = "toolu_" + call_id[5:]
                    block = {"type": "tool_use", "id": call_id, "name": call.name or "", "input": {}}
                    self.blocks.append(block)
                    self._arguments[index] = ""
                    self._open = index
                    events.append(("content_block_start", {"type": "content_block_start", "index": index,
                                                           "content_block": dict(block)}))
                if call.arguments:
                    self._arguments[index] += call.arguments
                    events.append(("content_block_delta", {
                        "type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": call.arguments}}))
            if delta.finish_reason is not None:
                self.finish = delta.finish_reason
                if delta.stop_sequence is not None:
                    self.stop_sequence = delta.stop_sequence
        return events

    def _text(self, kind: str, text: str) -> list[Event]:
        events: list[Event] = []
        if self._open is None or self.blocks[self._open]["type"] != kind:
            events += self._close()
            self._open = len(self.blocks)
            block = {"type": "text", "text": ""} if kind == "text" else {"type": "thinking", "thinking": "",
                                                                         "signature": ""}
            self.blocks.append(block)
            events.append(("content_block_start", {"type": "content_block_start", "index": self._open,
                                                   "content_block": dict(block)}))
        block = self.blocks[self._open]
        if kind == "text":
            block["text"] += text
            delta = {"type": "text_delta", "text": text}
        else:
            block["thinking"] += text
            delta = {"type": "thinking_delta", "thinking": text}
        events.append(("content_block_delta", {"type": "content_block_delta", "index": self._open,
                                               "delta": delta}))
        return events

    def _close(self) -> list[Event]:
        if self._open is None:
            return []
        index, self._open = self._open, None
        block = self.blocks[index]
        if block["type"] == "tool_use":
            block["input"] = _object(self._arguments.get(index, ""))
        return [("content_block_stop", {"type": "content_block_stop", "index": index})]

    @property
    def stop_reason(self) -> str:
        if self.stop_sequence is not None:
            return "stop_sequence"
        return {"length": "max_tokens", "tool_calls": "tool_use"}.get(self.finish or "stop", "end_turn")

    def end(self, usage: Usage) -> list[Event]:
        events = self._close()
        events.append(("message_delta", {"type": "message_delta",
                                         "delta": {"stop_reason": self.stop_reason,
                                                   "stop_sequence": self.stop_sequence},
                                         "usage": usage_object(usage)}))
        events.append(("message_stop", {"type": "message_stop"}))
        return events

    def fail(self, err: LokalError) -> list[Event]:
        return [("error", anthropic_envelope(err))]

    def message(self, usage: Usage) -> dict[str, Any]:
        self._close()
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": [dict(b) for b in self.blocks], "stop_reason": self.stop_reason,
                "stop_sequence": self.stop_sequence, "usage": usage_object(usage)}


def _object(arguments: str) -> dict[str, Any]:
    """A call's arguments as the object Anthropic's `input` is ({} when cut short)."""
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {"value": value}


def encode(events: list[Event]) -> bytes:
    return b"".join(sse(data, event=kind) for kind, data in events)


class StopScanner:
    """Cuts answer text at the first of the request's stop sequences and says which.

    Text that could be the start of a stop sequence is held back until the next
    delta tells; `matched` is set once one is found (the generation should stop)."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self._held = ""
        self.matched: str | None = None

    def feed(self, deltas: list[Delta]) -> list[Delta]:
        out: list[Delta] = []
        for delta in deltas:
            if self.matched is not None:
                break
            if delta.index != 0 or not self.stops:
                out.append(delta)
                continue
            text = self._held + delta.text
            self._held = ""
            found = [(text.find(s), s) for s in self.stops if s in text]
            if found:
                position, stop = min(found)
                self.matched = stop
                out.append(replace(delta, text=text[:position], tool_calls=delta.tool_calls,
                                   finish_reason="stop", stop_sequence=stop))
                break
            if delta.finish_reason is None and not delta.tool_calls:
                keep = self._partial(text)
                self._held = text[len(text) - keep:] if keep else ""
                text = text[:len(text) - keep]
            out.append(replace(delta, text=text))
        return out

    def _partial(self, text: str) -> int:
        """The length of text's longest ending that starts some stop sequence."""
        best = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:size]):
                    best = size
                    break
        return best
