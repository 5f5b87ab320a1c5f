"""Function calling for models whose templates know nothing of tools.

With tools in a chat task, the model is told the functions in a system message
and held by a JSON schema (a grammar in the engine) to answer with exactly one
object: `{"function": NAME, "arguments": {...}}` to call one, or
`{"answer": TEXT}` to reply. `EnvelopeReader` reads that object as it is
generated and turns it into text deltas or a tool call whose arguments stream,
so the envelope itself never reaches a client, streamed or not, cut short or
whole.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from lokal.errors import BadRequest
from lokal.tasks import ChatTask, Message, Tool, ToolCallDelta


class FunctionSpecError(BadRequest):
    """A function-calling request that cannot be honoured."""

    def __init__(self, message: str) -> None:
        super().__init__(message, param="tool_choice")


@dataclass
class FunctionPlan:
    """How a task's tools steer the reply: the functions offered and the schema."""

    tools: list[Tool]
    allow_answer: bool
    schema: dict[str, Any] = field(default_factory=dict)


def plan_functions(task: ChatTask) -> FunctionPlan | None:
    """The plan for a task with tools in play, or None."""
    if not task.tools or task.tool_choice == "none":
        return None
    tools = task.tools
    if task.tool_choice not in ("auto", "required"):
        tools = [t for t in tools if t.name == task.tool_choice]
        if not tools:
            raise FunctionSpecError(f"tool_choice names {task.tool_choice!r}, which is not among "
                                    "the functions given")
    allow_answer = task.tool_choice == "auto"
    calls = [{
        "type": "object",
        "properties": {"function": {"const": t.name},
                       "arguments": t.parameters or {"type": "object"}},
        "required": ["function", "arguments"],
    } for t in tools]
    options = calls + ([{"type": "object", "properties": {"answer": {"type": "string"}},
                         "required": ["answer"]}] if allow_answer else [])
    schema = options[0] if len(options) == 1 else {"oneOf": options}
    return FunctionPlan(tools=tools, allow_answer=allow_answer, schema=schema)


def instructions(plan: FunctionPlan) -> str:
    """The system text that tells the model its functions and the answer format."""
    lines = ["You can call these functions:"]
    for tool in plan.tools:
        lines.append(json.dumps({"name": tool.name, "description": tool.description,
                                 "parameters": tool.parameters or {}}, ensure_ascii=False))
    lines.append('To call one, reply with {"function": "<name>", "arguments": {...}}.')
    if plan.allow_answer:
        lines.append('To reply without calling a function, reply with {"answer": "<your reply>"}.')
    return "\n".join(lines)


def prompt_messages(messages: list[Message], plan: FunctionPlan | None) -> list[Message]:
    """Messages any chat template accepts: past calls and results as plain text."""
    out = []
    for message in messages:
        if message.role == "assistant" and message.tool_calls:
            call = message.tool_calls[0]
            try:
                arguments: Any = json.loads(call.arguments or "{}")
            except ValueError:
                arguments = call.arguments
            out.append(Message("assistant", json.dumps({"function": call.name, "arguments": arguments},
                                                       ensure_ascii=False), images=message.images))
        elif message.role == "tool":
            name = message.name or message.tool_call_id or "function"
            out.append(Message("user", f"Result of {name}: {message.text}", images=message.images))
        else:
            out.append(message)
    if plan is not None:
        system = instructions(plan)
        if out and out[0].role == "system":
            out[0] = Message("system", f"{out[0].text}\n\n{system}", images=out[0].images)
        else:
            out.insert(0, Message("system", system))
    return out


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


_WS = " \t\r\n"


def _string_prefix(buf: str, start: int) -> tuple[int, bool]:
    """How far the JSON string body starting at `start` can be decoded now: the end
    of the safe prefix (never inside an escape) and whether the closing quote is there."""
    i, n = start, len(buf)
    while i < n:
        c = buf[i]
        if c == '"':
            return i, True
        if c == "\\":
            if i + 1 >= n:
                return i, False
            if buf[i + 1] == "u":
                if i + 6 > n:
                    return i, False
                code = int(buf[i + 2:i + 6], 16) if _is_hex(buf[i + 2:i + 6]) else 0
                if 0xD800 <= code < 0xDC00:  # a surrogate pair: need its second half too
                    if i + 12 > n:
                        return i, False
                    i += 12
                    continue
                i += 6
                continue
            i += 2
            continue
        i += 1
    return n, False


def _is_hex(text: str) -> bool:
    return len(text) == 4 and all(c in "0123456789abcdefABCDEF" for c in text)


def _decode(body: str) -> str:
    try:
        return json.loads(f'"{body}"')
    except ValueError:
        return body


class EnvelopeReader:
    """Reads one choice's `{"function": ..., "arguments": ...}` / `{"answer": ...}`
    reply incrementally. `feed` returns what can be told so far: answer text, and
    tool-call deltas (first the call's id and name, then its arguments as they come).
    A reply that is not the envelope at all is passed on as text."""

    def __init__(self) -> None:
        self._buf = ""
        self._pos = 0
        self._state = "start"  # start, key, colon, value, answer, name, args, after, raw, done
        self._key: str | None = None
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._name: str | None = None
        self._args_before_name: str | None = None
        self._told = False  # some answer text went out
        self.call_id: str | None = None
        self.args_complete = False

    @property
    def is_call(self) -> bool:
        return self.call_id is not None

    def feed(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        self._buf += text
        out_text: list[str] = []
        calls: list[ToolCallDelta] = []
        while self._step(out_text, calls):
            pass
        # Keep the buffer small: drop what has been consumed.
        if self._pos > 4096:
            self._buf = self._buf[self._pos:]
            self._pos = 0
        return "".join(out_text), calls

    def _skip_ws(self) -> bool:
        buf, n = self._buf, len(self._buf)
        while self._pos < n and buf[self._pos] in _WS:
            self._pos += 1
        return self._pos < n

    def _step(self, out_text: list[str], calls: list[ToolCallDelta]) -> bool:
        """Read on from the current state: True while there is more to read now."""
        state, buf = self._state, self._buf
        if state in ("done", "after"):
            self._pos = len(buf)
            return False
        if state == "raw":
            if self._pos < len(buf):
                out_text.append(buf[self._pos:])
                self._pos = len(buf)
            return False
        if state == "answer":
            return self._read_answer(out_text)
        if state == "args":
            return self._read_args(calls)
        if not self._skip_ws():
            return False
        c = buf[self._pos]
        if state == "start":
            if c != "{":
                self._state = "raw"
                return True
            self._pos += 1
            self._state = "key"
            return True
        if state == "key":
            return self._read_key(c)
        if state == "colon":
            if c != ":":
                return self._give_up()
            self._pos += 1
            self._state = "value"
            return True
        if state == "value":
            return self._read_value(c, calls)
        return False

    def _read_key(self, c: str) -> bool:
        """At c, the envelope's next key, a comma, or its closing brace."""
        buf = self._buf
        if c == "}":
            self._state = "done"
            return True
        if c == ",":
            self._pos += 1
            return True
        if c != '"':
            return self._give_up()
        end, closed = _string_prefix(buf, self._pos + 1)
        if not closed:
            return False
        self._key = _decode(buf[self._pos + 1:end])
        self._pos = end + 1
        self._state = "colon"
        return True

    def _read_value(self, c: str, calls: list[ToolCallDelta]) -> bool:
        """At c, the value of the key just read: the answer's text starts, the function's
        name is told (with any arguments that came before it), or the arguments start."""
        buf = self._buf
        if self._key == "answer" and c == '"' and self.call_id is None:
            self._pos += 1
            self._state = "answer"
            return True
        if self._key == "function" and c == '"':
            end, closed = _string_prefix(buf, self._pos + 1)
            if not closed:
                return False
            self._name = _decode(buf[self._pos + 1:end])
            self._pos = end + 1
            self.call_id = new_call_id()
            calls.append(ToolCallDelta(0, id=self.call_id, name=self._name))
            if self._args_before_name is not None:
                calls.append(ToolCallDelta(0, arguments=self._args_before_name))
                self.args_complete = True
            self._state = "key"
            return True
        if self._key == "arguments":
            self._state = "args"  # starts at the value's first character
            self._depth = 0
            return True
        return self._give_up()

    def _read_answer(self, out_text: list[str]) -> bool:
        buf = self._buf
        end, closed = _string_prefix(buf, self._pos)
        if end > self._pos:
            out_text.append(_decode(buf[self._pos:end]))
            self._told = True
            self._pos = end
        if closed:
            self._pos += 1
            self._state = "after"
            return True
        return False

    def _read_args(self, calls: list[ToolCallDelta]) -> bool:
        buf, start, i, n = self._buf, self._pos, self._pos, len(self._buf)
        while i < n:
            c = buf[i]
            i += 1
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif c == "\\":
                    self._escape = True
                elif c == '"':
                    self._in_string = False
            elif c == '"':
                self._in_string = True
            elif c in "{[":
                self._depth += 1
            elif c in "}]":
                self._depth -= 1
            if self._depth == 0 and not self._in_string and c not in _WS:
                if c in "}]\"" or (i < n and buf[i] in ",} \t\r\n"):
                    self.args_complete = True
                    break
        piece = buf[start:i]
        self._pos = i
        if piece:
            if self.call_id is not None:
                calls.append(ToolCallDelta(0, arguments=piece))
            else:
                self._args_before_name = (self._args_before_name or "") + piece
        if self.args_complete:
            self._state = "key" if self.call_id is None else "after"
            return True
        return False

    def _give_up(self) -> bool:
        """Not the agreed envelope: when nothing was told yet, the whole reply is the
        model's own text; after a call or part of an answer, the rest is dropped."""
        if self.call_id is not None or self._told:
            self._state = "done"
            return False
        self._state = "raw"
        self._pos = 0
        return True
