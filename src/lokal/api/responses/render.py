"""Deltas into a Responses API answer: its stream events, and the whole response.

One `ResponseRenderer` follows a generation: every batch of deltas becomes the
events OpenAI sends (output items opened, their parts, text and argument deltas,
items closed), each with its `sequence_number`; the whole response object is
the state those events built, so a streamed and a whole answer say the same.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from lokal.api.generation import sse
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

    def __init__(self, model: str, echo: dict[str, Any],
                 namespaced: dict[str, tuple[str, str]] | None = None) -> None:
        self.id = _id("resp_")
        # flat function name -> (namespace, name): calls go back under the client's names
        self.namespaced = namespaced or {}
        self.model = model
        self.created_at = int(time.time())
        self.echo = echo  # request fields a response repeats (instructions, tools, ...)
        self.output: list[dict[str, Any]] = []
        self.sequence = 0
        self._open: int | None = None  # output index of the item still being written
        self._calls: dict[int, int] = {}  # tool-call position -> output index
        self.finish: str | None = None

    # Events -----------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> Event:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return kind, data

    def start(self) -> list[Event]:
        return [self._event("response.created", response=self.response("in_progress")),
                self._event("response.in_progress", response=self.response("in_progress"))]

    def feed(self, deltas: list[Delta]) -> list[Event]:
        events: list[Event] = []
        for delta in deltas:
            if delta.index != 0:
                continue  # the Responses API has one answer per request
            if delta.reasoning:
                events += self._text("reasoning", delta.reasoning)
            if delta.text:
                events += self._text("message", delta.text)
            for call in delta.tool_calls or ():
                index = self._calls.get(call.position)
                if index is None or call.id is not None and self.output[index]["call_id"] != call.id:
                    events += self._close()
                    index = len(self.output)
                    self._calls[call.position] = index
                    item = {"id": _id("fc_"), "type": "function_call", "status": "in_progress",
                            "call_id": call.id or _id("call_"), "name": "", "arguments": ""}
                    self._name(item, call.name)
                    self.output.append(item)
                    self._open = index
                    events.append(self._event("response.output_item.added", output_index=index,
                                              item=dict(item)))
                item = self.output[index]
                if call.name and not item["name"]:
                    self._name(item, call.name)
                if call.arguments:
                    item["arguments"] += call.arguments
                    events.append(self._event("response.function_call_arguments.delta", item_id=item["id"],
                                              output_index=index, delta=call.arguments))
            if delta.finish_reason is not None:
                self.finish = delta.finish_reason
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

    def _text(self, kind: str, text: str) -> list[Event]:
        events: list[Event] = []
        open_item = self.output[self._open] if self._open is not None else None
        if open_item is None or open_item["type"] != kind:
            events += self._close()
            index = len(self.output)
            part_type = "output_text" if kind == "message" else "reasoning_text"
            if kind == "message":
                item: dict[str, Any] = {"id": _id("msg_"), "type": "message", "status": "in_progress",
                                        "role": "assistant", "content": []}
            else:
                item = {"id": _id("rs_"), "type": "reasoning", "summary": [], "content": [],
                        "status": "in_progress"}
            self.output.append(item)
            self._open = index
            events.append(self._event("response.output_item.added", output_index=index,
                                      item={**item, "content": []}))
            part = _part(part_type, "")
            item["content"].append(part)
            events.append(self._event("response.content_part.added", item_id=item["id"], output_index=index,
                                      content_index=0, part=dict(part)))
            open_item = item
        index = self._open
        assert index is not None
        open_item["content"][0]["text"] += text
        if kind == "message":
            events.append(self._event("response.output_text.delta", item_id=open_item["id"],
                                      output_index=index, content_index=0, delta=text, logprobs=[]))
        else:
            events.append(self._event("response.reasoning_text.delta", item_id=open_item["id"],
                                      output_index=index, content_index=0, delta=text))
        return events

    def _close(self, status: str = "completed") -> list[Event]:
        """The done events of the item being written, if any."""
        if self._open is None:
            return []
        index, self._open = self._open, None
        item = self.output[index]
        item["status"] = status
        events: list[Event] = []
        if item["type"] == "function_call":
            events.append(self._event("response.function_call_arguments.done", item_id=item["id"],
                                      output_index=index, name=item["name"], arguments=item["arguments"]))
        else:
            part = item["content"][0]
            if item["type"] == "message":
                events.append(self._event("response.output_text.done", item_id=item["id"], output_index=index,
                                          content_index=0, text=part["text"], logprobs=[]))
            else:
                events.append(self._event("response.reasoning_text.done", item_id=item["id"],
                                          output_index=index, content_index=0, text=part["text"]))
            events.append(self._event("response.content_part.done", item_id=item["id"], output_index=index,
                                      content_index=0, part=dict(part)))
        events.append(self._event("response.output_item.done", output_index=index, item=_copy(item)))
        return events

    def end(self, usage: Usage) -> list[Event]:
        """The closing events: the last item's, then completed (or incomplete when cut)."""
        incomplete = self.finish == "length"
        events = self._close("incomplete" if incomplete else "completed")
        status = "incomplete" if incomplete else "completed"
        events.append(self._event(f"response.{status}", response=self.response(status, usage)))
        return events

    def fail(self, error: dict[str, Any]) -> list[Event]:
        """An error after the stream began: an `error` event, then `response.failed`
        (its code: the error's own where it has a word for it, else its type)."""
        code = error.get("code") if isinstance(error.get("code"), str) else None
        code = str(code or error.get("type") or "server_error")
        message = str(error.get("message") or "The server had an error.")
        return [self._event("error", code=code, message=message, param=error.get("param")),
                self._event("response.failed", response=self.response(
                    "failed", error={"code": code, "message": message}))]

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


def encode(events: list[Event]) -> bytes:
    return b"".join(sse(data, event=kind) for kind, data in events)
