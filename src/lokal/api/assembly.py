"""Deltas into the ordered parts of one answer: text, reasoning and tool calls.

Every API family shows an answer as a sequence of parts — Anthropic's content
blocks, the Responses API's output items, Ollama's message with its tool calls,
OpenAI's message — and they differ only in how a part is written on the wire.
`Assembler` follows the deltas of one choice and says when a part opens, grows
and closes; each family's renderer writes those three events its own way, and
the whole answer of every family is the parts the same events built.

The rule for tool-call arguments, the same in every family (docs/architecture.md):
arguments are streamed as the model writes them; when a call closes they are read
once (`ToolCallPart.input`). Text that is a cut-off JSON object (the model hit its
token limit mid-call) is completed by closing its open strings, arrays and objects,
as Anthropic's own API reports a cut tool call; text that is not JSON at all, or is
JSON but not an object, is kept whole under the key `"_raw"`. Families whose wire
carries arguments as text (OpenAI, Responses) send the model's text unchanged;
families whose wire carries an object (Anthropic `input`, Ollama `arguments`) send
`input`. Nothing is dropped, nothing is invented, and no client gets JSON it cannot
parse.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from lokal.tasks import Delta, FinishReason

log = logging.getLogger(__name__)

PartKind = Literal["text", "reasoning", "tool_call"]


@dataclass(eq=False)
class Part:
    """One part of an answer, in the order the model wrote it. Text and reasoning
    parts grow `text`; a tool call grows `arguments` (JSON text)."""

    kind: PartKind
    index: int  # position among the answer's parts
    text: str = ""
    call_id: str | None = None
    name: str = ""
    arguments: str = ""
    position: int = 0  # tool calls: the call's position among the turn's calls
    closed: bool = False

    @property
    def input(self) -> dict[str, Any]:
        """A tool call's arguments as an object, by the module's rule."""
        return arguments_object(self.arguments)


ToolCallPart = Part


@dataclass(frozen=True)
class Opened:
    part: Part


@dataclass(frozen=True)
class Grew:
    part: Part
    text: str  # what the part gained: text, reasoning or argument JSON


@dataclass(frozen=True)
class Closed:
    part: Part


Event = Opened | Grew | Closed


@dataclass
class Assembler:
    """The parts of one choice, built from its deltas (`feed`), ended by `close`."""

    choice: int = 0
    parts: list[Part] = field(default_factory=list)
    finish: FinishReason | None = None
    stop_sequence: str | None = None
    _open: Part | None = None
    _calls: dict[int, Part] = field(default_factory=dict)  # call position -> its part

    def feed(self, deltas: list[Delta]) -> list[Event]:
        """The events these deltas make (deltas of other choices are skipped)."""
        events: list[Event] = []
        for delta in deltas:
            if delta.index != self.choice:
                continue
            if delta.reasoning:
                self._grow_text("reasoning", delta.reasoning, events)
            if delta.text:
                self._grow_text("text", delta.text, events)
            for call in delta.tool_calls or ():
                opened = False
                part = self._calls.get(call.position)
                if part is None or (call.id is not None and part.call_id not in (None, call.id)):
                    self._close(events)
                    part = self._new("tool_call", events, call_id=call.id, name=call.name or "",
                                     position=call.position)
                    self._calls[call.position] = part
                    opened = True
                elif part is not self._open:  # a later part of a call already closed: reopen
                    self._close(events)
                    part.closed = False
                    self._open = part
                if call.name and not opened:
                    part.name += call.name  # a name streamed in pieces
                if call.arguments:
                    part.arguments += call.arguments
                    events.append(Grew(part, call.arguments))
            if delta.finish_reason is not None:
                self.finish = delta.finish_reason
                if delta.stop_sequence is not None:
                    self.stop_sequence = delta.stop_sequence
        return events

    def close(self) -> list[Event]:
        """End the answer: the open part closes."""
        events: list[Event] = []
        self._close(events)
        return events

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.parts if p.kind == "text")

    @property
    def reasoning(self) -> str:
        return "".join(p.text for p in self.parts if p.kind == "reasoning")

    @property
    def calls(self) -> list[Part]:
        return [p for p in self.parts if p.kind == "tool_call"]

    def _grow_text(self, kind: PartKind, text: str, events: list[Event]) -> None:
        part = self._open
        if part is None or part.kind != kind:
            self._close(events)
            part = self._new(kind, events)
        part.text += text
        events.append(Grew(part, text))

    def _new(self, kind: PartKind, events: list[Event], **fields: Any) -> Part:
        part = Part(kind, len(self.parts), **fields)
        self.parts.append(part)
        self._open = part
        events.append(Opened(part))
        return part

    def _close(self, events: list[Event]) -> None:
        part, self._open = self._open, None
        if part is not None and not part.closed:
            part.closed = True
            if part.kind == "tool_call" and _parse_object(part.arguments) is None and part.arguments.strip():
                log.warning("tool call %r: its arguments are not a JSON object (%d characters%s); "
                            "delivered as the rule in docs/architecture.md says", part.name,
                            len(part.arguments), ", cut at the token limit" if self.finish == "length" else "")
            events.append(Closed(part))


def arguments_object(text: str) -> dict[str, Any]:
    """Tool-call argument text as an object: parsed, completed when cut off, or the raw
    text under `"_raw"` (see the module's rule)."""
    if not text.strip():
        return {}
    value = _parse_object(text)
    if value is not None:
        return value
    healed = _complete_json(text)
    if healed is not None:
        value = _parse_object(healed)
        if value is not None:
            return value
    return {"_raw": text}


def _parse_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _complete_json(text: str) -> str | None:
    """A JSON object cut off mid-way, closed: open strings, arrays and objects are
    ended, a dangling `,` or `:` (a key without its value) dropped. None when the text
    does not start like an object."""
    text = text.strip()
    if not text.startswith("{"):
        return None
    closers: list[str] = []
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            closers.append("}" if char == "{" else "]")
        elif char in "}]":
            if not closers:
                return None
            closers.pop()
    out = text
    if in_string:
        out = out[:-1] if escaped else out
        out += '"'
    out = out.rstrip()
    # A key with no value yet, or a trailing comma: drop it.
    for _ in range(2):
        stripped = out.rstrip()
        if stripped.endswith(","):
            out = stripped[:-1]
        elif stripped.endswith(":"):
            out = stripped[:-1].rstrip()
            if out.endswith('"'):  # the key itself
                start = out.rfind('"', 0, len(out) - 1)
                out = out[:start].rstrip().rstrip(",")
    return out + "".join(reversed(closers))
