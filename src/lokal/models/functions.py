"""Function calling for models whose templates know nothing of tools.

With `functions` (OpenAI's legacy field, what Dify sends) or `tools` in a chat
request, the model is told the functions in a system message and constrained by
a JSON schema (a grammar in the engine) to answer with exactly one object:
`{"function": NAME, "arguments": {...}}` to call one, or `{"answer": TEXT}` to
reply. The object is parsed back into `function_call` / `tool_calls` or plain
content, as the OpenAI API returns them.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from lokal.errors import BadRequest


class FunctionSpecError(BadRequest):
    """A function-calling request that cannot be honoured."""

    def __init__(self, message: str) -> None:
        super().__init__(message, param="tool_choice")


@dataclass
class FunctionPlan:
    """How a request's functions steer and shape the answer."""

    functions: list[dict[str, Any]]
    legacy: bool  # `functions` (answer as function_call) rather than `tools` (tool_calls)
    allow_answer: bool
    schema: dict[str, Any] = field(default_factory=dict)


def _choice_name(choice: Any) -> str | None:
    if isinstance(choice, dict):
        function = choice.get("function") if "function" in choice else choice
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str):
            raise FunctionSpecError("tool_choice / function_call must name a function")
        return name
    return None


def plan_functions(request: dict[str, Any]) -> FunctionPlan | None:
    """The plan for a request with functions or tools, or None when it has none in play."""
    legacy = bool(request.get("functions")) and not request.get("tools")
    if legacy:
        functions = list(request["functions"])
        choice = request.get("function_call", "auto")
    elif request.get("tools"):
        functions = [tool["function"] for tool in request["tools"]]
        choice = request.get("tool_choice", "auto")
    else:
        return None
    if choice == "none":
        return None
    forced = _choice_name(choice)
    if forced is not None:
        functions = [f for f in functions if f.get("name") == forced]
        if not functions:
            raise FunctionSpecError(f"tool_choice names {forced!r}, which is not among the functions given")
    allow_answer = choice == "auto"
    calls = [{
        "type": "object",
        "properties": {"function": {"const": f["name"]},
                       "arguments": f.get("parameters") or {"type": "object"}},
        "required": ["function", "arguments"],
    } for f in functions]
    options = calls + ([{"type": "object", "properties": {"answer": {"type": "string"}},
                         "required": ["answer"]}] if allow_answer else [])
    schema = options[0] if len(options) == 1 else {"oneOf": options}
    return FunctionPlan(functions=functions, legacy=legacy, allow_answer=allow_answer, schema=schema)


def instructions(plan: FunctionPlan) -> str:
    """The system text that tells the model its functions and the answer format."""
    lines = ["You can call these functions:"]
    for f in plan.functions:
        lines.append(json.dumps({"name": f["name"], "description": f.get("description", ""),
                                 "parameters": f.get("parameters") or {}}, ensure_ascii=False))
    lines.append('To call one, reply with {"function": "<name>", "arguments": {...}}.')
    if plan.allow_answer:
        lines.append('To reply without calling a function, reply with {"answer": "<your reply>"}.')
    return "\n".join(lines)


def prompt_messages(messages: list[dict[str, Any]], plan: FunctionPlan | None) -> list[dict[str, Any]]:
    """Messages any chat template accepts: past calls and results as plain text."""
    out = []
    for message in messages:
        role = message["role"]
        item = dict(message)
        call = message.get("function_call") or next(
            (c.get("function") for c in message.get("tool_calls") or []), None)
        if role == "assistant" and call:
            try:
                arguments = json.loads(call.get("arguments") or "{}")
            except ValueError:
                arguments = call.get("arguments")
            item = {"role": "assistant",
                    "content": json.dumps({"function": call["name"], "arguments": arguments},
                                          ensure_ascii=False)}
        elif role in ("function", "tool"):
            name = message.get("name") or message.get("tool_call_id") or "function"
            item = {"role": "user", "content": f"Result of {name}: {_text(message.get('content'))}"}
        out.append(item)
    if plan is not None:
        system = instructions(plan)
        if out and out[0]["role"] == "system":
            out[0] = dict(out[0], content=f"{_text(out[0].get('content'))}\n\n{system}")
        else:
            out.insert(0, {"role": "system", "content": system})
    return out


def _text(content: Any) -> str:
    from lokal.models.prompting import content_text

    return content_text(content)


def parse_reply(text: str, plan: FunctionPlan) -> tuple[dict[str, Any], str]:
    """The assistant message and finish reason for the model's JSON reply."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("function"), str):
        name = data["function"]
        arguments = json.dumps(data.get("arguments", {}), ensure_ascii=False)
        if plan.legacy:
            return ({"role": "assistant", "content": None,
                     "function_call": {"name": name, "arguments": arguments}}, "function_call")
        return ({"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_" + uuid.uuid4().hex[:24], "type": "function",
            "function": {"name": name, "arguments": arguments}}]}, "tool_calls")
    if isinstance(data, dict) and isinstance(data.get("answer"), str):
        return {"role": "assistant", "content": data["answer"]}, "stop"
    # Cut short (max_tokens) or otherwise not the agreed JSON: hand back what was said.
    return {"role": "assistant", "content": text}, "length"
