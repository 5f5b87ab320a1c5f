"""Deltas into an Anthropic Messages answer: its stream events and the whole message.

`MessageRenderer` is the family's `api.respond.Renderer`: the parts `api.assembly`
makes of the deltas become the events the Anthropic SDKs parse (`message_start`,
per block `content_block_start` / `_delta` / `_stop`, `message_delta`,
`message_stop`, `ping` while the prompt runs); the whole message is the same parts.
A tool call's `input` follows the arguments rule of `api.assembly`.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi.responses import JSONResponse

from lokal.api.assembly import Assembler, Closed, Grew, Opened, Part
from lokal.api.respond import sse_events
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

    media_type = "text/event-stream"

    def __init__(self, model: str) -> None:
        self.id = "msg_" + uuid.uuid4().hex
        self.model = model
        self.assembler = Assembler()
        self._ids: dict[int, str] = {}  # tool-call part -> its toolu_ id

    def start(self) -> bytes:
        message = {"id": self.id, "type": "message", "role": "assistant", "model": self.model,
                   "content": [], "stop_reason": None, "stop_sequence": None,
                   # the prompt is counted when it has run: message_delta carries the counts
                   "usage": {"input_tokens": 0, "cache_creation_input_tokens": 0,
                             "cache_read_input_tokens": 0, "output_tokens": 0}}
        return sse_events([("message_start", {"type": "message_start", "message": message}),
                           ("ping", {"type": "ping"})])

    def feed(self, deltas: list[Delta]) -> bytes:
        return sse_events(self._events(self.assembler.feed(deltas)))

    def keepalive(self) -> bytes:
        return sse_events([("ping", {"type": "ping"})])

    def end(self, usage: Usage) -> bytes:
        events = self._events(self.assembler.close())
        events.append(("message_delta", {"type": "message_delta",
                                         "delta": {"stop_reason": self.stop_reason,
                                                   "stop_sequence": self.assembler.stop_sequence},
                                         "usage": usage_object(usage)}))
        events.append(("message_stop", {"type": "message_stop"}))
        return sse_events(events)

    def fail(self, err: LokalError) -> bytes:
        return sse_events([("error", anthropic_envelope(err))])

    def whole(self, deltas: list[Delta], usage: Usage) -> JSONResponse:
        self.assembler.feed(deltas)
        self.assembler.close()
        return JSONResponse(self.message(usage))

    def message(self, usage: Usage) -> dict[str, Any]:
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": [self._block(p, final=True) for p in self.assembler.parts],
                "stop_reason": self.stop_reason, "stop_sequence": self.assembler.stop_sequence,
                "usage": usage_object(usage)}

    @property
    def stop_reason(self) -> str:
        if self.assembler.stop_sequence is not None:
            return "stop_sequence"
        finish = self.assembler.finish or "stop"
        return {"length": "max_tokens", "tool_calls": "tool_use"}.get(finish, "end_turn")

    def _tool_id(self, part: Part) -> str:
        if part.index not in self._ids:
            call_id = part.call_id or "toolu_" + uuid.uuid4().hex[:24]
            self._ids[part.index] = "toolu_" + call_id[5:] if call_id.startswith("call_") else call_id
        return self._ids[part.index]

    def _block(self, part: Part, final: bool = False) -> dict[str, Any]:
        if part.kind == "text":
            return {"type": "text", "text": part.text if final else ""}
        if part.kind == "reasoning":
            return {"type": "thinking", "thinking": part.text if final else "", "signature": ""}
        return {"type": "tool_use", "id": self._tool_id(part), "name": part.name,
                "input": part.input if final else {}}

    def _events(self, events: list[Opened | Grew | Closed]) -> list[Event]:
        out: list[Event] = []
        for event in events:
            index = event.part.index
            if isinstance(event, Opened):
                out.append(("content_block_start", {"type": "content_block_start", "index": index,
                                                    "content_block": self._block(event.part)}))
            elif isinstance(event, Grew):
                kind = event.part.kind
                if kind == "text":
                    delta = {"type": "text_delta", "text": event.text}
                elif kind == "reasoning":
                    delta = {"type": "thinking_delta", "thinking": event.text}
                else:
                    delta = {"type": "input_json_delta", "partial_json": event.text}
                out.append(("content_block_delta", {"type": "content_block_delta", "index": index,
                                                    "delta": delta}))
            else:
                out.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
        return out
