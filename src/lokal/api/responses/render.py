"""Deltas into a Responses API answer: its stream events, and the whole response.

`ResponseRenderer` is the family's `api.respond.Renderer`: the parts `api.assembly`
makes of the deltas become the events OpenAI sends (output items opened, their
parts, text and argument deltas, items closed), each with its `sequence_number`,
and `response.in_progress` again while the prompt runs; the whole response object
is the state those events built, so a streamed and a whole answer say the same.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi.responses import JSONResponse

from lokal.api.assembly import Assembler, Closed, Grew, Opened, Part
from lokal.api.responses.errors import responses_envelope
from lokal.api.respond import sse_events
from lokal.errors import LokalError
from lokal.tasks import Delta, Usage

Event = tuple[str, dict[str, Any]]


def _id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex


def usage_object(usage: Usage | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {"input_tokens": usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": usage.cached_tokens or 0},
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage.total_tokens}


class ResponseRenderer:
    """The events and the response of one Responses request."""

    media_type = "text/event-stream"

    def __init__(self, model: str, echo: dict[str, Any],
                 namespaced: dict[str, tuple[str, str]] | None = None) -> None:
        self.id = _id("resp_")
        # flat function name -> (namespace, name): calls go back under the client's names
        self.namespaced = namespaced or {}
        self.model = model
        self.created_at = int(time.time())
        self.echo = echo  # request fields a response repeats (instructions, tools, ...)
        self.assembler = Assembler()
        self.output: list[dict[str, Any]] = []  # the items, by part index
        self.sequence = 0

    @property
    def finish(self) -> str | None:
        return self.assembler.finish

    # Renderer ---------------------------------------------------------------

    def start(self) -> bytes:
        return sse_events([self._event("response.created", response=self.response("in_progress")),
                           self._event("response.in_progress", response=self.response("in_progress"))])

    def feed(self, deltas: list[Delta]) -> bytes:
        return sse_events(self._events(self.assembler.feed(deltas)))

    def keepalive(self) -> bytes:
        return sse_events([self._event("response.in_progress", response=self.response("in_progress"))])

    def end(self, usage: Usage) -> bytes:
        """The closing events: the last item's, then completed (or incomplete when cut)."""
        events = self._events(self.assembler.close())
        status = self.status
        events.append(self._event(f"response.{status}", response=self.response(status, usage)))
        return sse_events(events)

    def fail(self, err: LokalError) -> bytes:
        """An error after the stream began: an `error` event, then `response.failed`."""
        error = responses_envelope(err)["error"]
        # its code where it has a word for it (context_length_exceeded), else its type
        code = str(error["code"] if isinstance(error.get("code"), str) else error.get("type") or "server_error")
        message = str(error.get("message") or "The server had an error.")
        return sse_events([self._event("error", code=code, message=message, param=error.get("param")),
                           self._event("response.failed", response=self.response(
                               "failed", error={"code": code, "message": message}))])

    def whole(self, deltas: list[Delta], usage: Usage) -> JSONResponse:
        self._events(self.assembler.feed(deltas) + self.assembler.close())
        return JSONResponse(self.response(self.status, usage))

    @property
    def status(self) -> str:
        return "incomplete" if self.finish == "length" else "completed"

    # Events -----------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> Event:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return kind, data

    def _events(self, events: list[Opened | Grew | Closed]) -> list[Event]:
        out: list[Event] = []
        for event in events:
            part = event.part
            if isinstance(event, Opened):
                out += self._opened(part)
            elif isinstance(event, Grew):
                out.append(self._grew(part, event.text))
            else:
                out += self._closed(part)
        return out

    def _opened(self, part: Part) -> list[Event]:
        index = part.index
        if part.kind == "tool_call":
            item: dict[str, Any] = {"id": _id("fc_"), "type": "function_call", "status": "in_progress",
                                    "call_id": part.call_id or _id("call_"), "name": "", "arguments": ""}
            self._name(item, part.name)
            self.output.append(item)
            return [self._event("response.output_item.added", output_index=index, item=dict(item))]
        if part.kind == "text":
            item = {"id": _id("msg_"), "type": "message", "status": "in_progress", "role": "assistant",
                    "content": []}
        else:
            item = {"id": _id("rs_"), "type": "reasoning", "summary": [], "content": [], "status": "in_progress"}
        self.output.append(item)
        events = [self._event("response.output_item.added", output_index=index, item={**item, "content": []})]
        content = _part("output_text" if part.kind == "text" else "reasoning_text", "")
        item["content"].append(content)
        events.append(self._event("response.content_part.added", item_id=item["id"], output_index=index,
                                  content_index=0, part=dict(content)))
        return events

    def _name(self, item: dict[str, Any], name: str | None) -> None:
        """A call's name as the client named the function: a namespaced one split apart."""
        if not name:
            return
        namespaced = self.namespaced.get(name)
        if namespaced is None:
            item["name"] = name
        else:
            item["namespace"], item["name"] = namespaced

    def _grew(self, part: Part, text: str) -> Event:
        item = self.output[part.index]
        if part.kind == "tool_call":
            if part.name and not item["name"]:
                self._name(item, part.name)
            item["arguments"] += text
            return self._event("response.function_call_arguments.delta", item_id=item["id"],
                               output_index=part.index, delta=text)
        item["content"][0]["text"] += text
        if part.kind == "text":
            return self._event("response.output_text.delta", item_id=item["id"], output_index=part.index,
                               content_index=0, delta=text, logprobs=[])
        return self._event("response.reasoning_text.delta", item_id=item["id"], output_index=part.index,
                           content_index=0, delta=text)

    def _closed(self, part: Part) -> list[Event]:
        index = part.index
        item = self.output[index]
        item["status"] = "incomplete" if self.finish == "length" else "completed"
        events: list[Event] = []
        if part.kind == "tool_call":
            item["name"] = item["name"] or part.name
            events.append(self._event("response.function_call_arguments.done", item_id=item["id"],
                                      output_index=index, name=item["name"], arguments=item["arguments"]))
        else:
            content = item["content"][0]
            if part.kind == "text":
                events.append(self._event("response.output_text.done", item_id=item["id"], output_index=index,
                                          content_index=0, text=content["text"], logprobs=[]))
            else:
                events.append(self._event("response.reasoning_text.done", item_id=item["id"],
                                          output_index=index, content_index=0, text=content["text"]))
            events.append(self._event("response.content_part.done", item_id=item["id"], output_index=index,
                                      content_index=0, part=dict(content)))
        events.append(self._event("response.output_item.done", output_index=index, item=_copy(item)))
        return events

    # The response -----------------------------------------------------------

    def response(self, status: str, usage: Usage | None = None,
                 error: dict[str, Any] | None = None) -> dict[str, Any]:
        done = status in ("completed", "incomplete", "failed")
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": error,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "model": self.model,
            "output": [_copy(item) for item in self.output] if done else [],
            "previous_response_id": None,
            "store": False,
            "usage": usage_object(usage) if done else None,
            **self.echo,
        }


def _part(kind: str, text: str) -> dict[str, Any]:
    if kind == "output_text":
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {"type": kind, "text": text}


def _copy(item: dict[str, Any]) -> dict[str, Any]:
    out = dict(item)
    if "content" in out:
        out["content"] = [dict(p) for p in out["content"]]
    return out
