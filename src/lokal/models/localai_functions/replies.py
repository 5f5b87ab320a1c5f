"""A reply on the LocalAI path read into text and tool calls: LocalAI's replacements,
captures, response regexes, JSON objects and `<tool_call>` markup, and `ReplyReader`, which
turns one choice's text into text and tool-call deltas."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import re2

from lokal.models import localai_config
from lokal.models.localai_config import compile_regex
from lokal.models.localai_functions.config import FunctionConfig, ReplaceResult
from lokal.models.localai_functions.planning import LocalAIPlan, go_json, plan
from lokal.tasks import ChatTask, ToolCallDelta

log = logging.getLogger(__name__)


@dataclass
class Call:
    name: str
    arguments: str


def _go_expand(template: str, match: Any) -> str:
    """Go's regexp replacement: `$1`, `${1}`, `$name`, `${name}`, `$$`."""
    out, i, n = [], 0, len(template)
    while i < n:
        c = template[i]
        if c != "$" or i + 1 >= n:
            out.append(c)
            i += 1
            continue
        if template[i + 1] == "$":
            out.append("$")
            i += 2
            continue
        if template[i + 1] == "{":
            end = template.find("}", i + 2)
            if end < 0:
                out.append(c)
                i += 1
                continue
            name, i = template[i + 2:end], end + 1
        else:
            j = i + 1
            while j < n and (template[j].isalnum() or template[j] == "_"):
                j += 1
            if j == i + 1:
                out.append(c)
                i += 1
                continue
            name, i = template[i + 1:j], j
        try:
            group = match.group(int(name) if name.isdigit() else name)
        except (IndexError, KeyError, ValueError, re2.error):  # type: ignore[attr-defined]
            group = None
        out.append(group or "")
    return "".join(out)


def _replace(text: str, rules: list[ReplaceResult]) -> str:
    for rule in rules:
        text = compile_regex(rule.key).sub(lambda m, v=rule.value: _go_expand(v, m), text)
    return text


_QUOTED = re2.compile(r'"[^"\\]*(?:\\[\s\S][^"\\]*)*"')


def _escape_newlines(text: str) -> str:
    return _QUOTED.sub(lambda m: m.group(0).replace("\r", "\\n").replace("\n", "\\n"), text)


def json_objects(text: str) -> list[dict[str, Any]]:
    """Every JSON object in text (arrays give their objects), skipping what is not JSON,
    as LocalAI's lenient reader does."""
    decoder = json.JSONDecoder()
    out: list[dict[str, Any]] = []
    i, n = 0, len(text)
    while i < n:
        start = min((p for p in (text.find("{", i), text.find("[", i)) if p >= 0), default=-1)
        if start < 0:
            break
        try:
            value, end = decoder.raw_decode(text, start)
        except ValueError:
            i = start + 1
            continue
        if isinstance(value, dict):
            out.append(value)
        elif isinstance(value, list):
            out.extend(v for v in value if isinstance(v, dict))
        i = end
    return out


def go_marshal(value: Any) -> str:
    """JSON as Go's encoding/json writes it: compact, map keys sorted, <, > and & escaped."""
    text = json.dumps(go_json(value), ensure_ascii=False, separators=(",", ":"))
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _arguments_text(value: Any, config: FunctionConfig) -> str:
    if isinstance(value, str):
        try:
            if isinstance(json.loads(value), dict):
                return value
        except ValueError:
            pass
        if config.automatic_tool_parsing_fallback:
            return go_marshal({"query": value})
        return value
    return go_marshal(value)


def _argument_pairs(arguments: str, config: FunctionConfig) -> str:
    if not config.argument_regex:
        return arguments
    key_name = config.argument_regex_key_name or "key"
    value_name = config.argument_regex_value_name or "value"
    args: dict[str, str] = {}
    for pattern in config.argument_regex:
        for match in compile_regex(pattern).finditer(arguments):
            try:
                args[match.group(key_name)] = match.group(value_name)
            except (IndexError, re2.error):  # type: ignore[attr-defined]
                continue
    return go_marshal(args)


_TOOL_CALL_BLOCK = re2.compile(r"(?s)<tool_call>\s*(.*?)\s*(?:</tool_call>|$)")
_FUNCTION_TAG = re2.compile(r"(?s)<function=([^>]+)>(.*?)</function>")
_PARAMETER_TAG = re2.compile(r"(?s)<parameter=([^>]+)>(.*?)</parameter>")


def _parameter_value(text: str) -> Any:
    text = text.strip()
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_calls(text: str, config: FunctionConfig) -> list[Call]:
    """The calls in a whole reply, as LocalAI's parser finds them (see the module)."""
    text = _replace(text, config.replace_function_results)
    name_key, args_key = config.name_key, config.arguments_key
    calls: list[Call] = []
    if config.response_regex:
        for pattern in config.response_regex:
            regex = compile_regex(pattern)
            for match in regex.finditer(text):
                groups = {k: v for k, v in match.groupdict().items() if v is not None}
                name = groups.get(name_key, "")
                if not name:
                    return calls
                calls.append(Call(name, _argument_pairs(groups.get(args_key, ""), config)))
    else:
        pieces: list[str] = []
        for pattern in config.json_regex_match:
            found = [m.group(1) for m in compile_regex(pattern).finditer(text) if m.re.groups >= 1]
            if found:
                pieces = [p for p in found if p is not None]
                break
        for piece in pieces or [text]:
            for obj in json_objects(_escape_newlines(piece)):
                name, args = obj.get(name_key), obj.get(args_key, None)
                if not isinstance(name, str) or args_key not in obj:
                    continue
                calls.append(Call(name, _arguments_text(args, config)))
    if not calls:
        calls = _markup_calls(text, config)
    return calls


def _markup_calls(text: str, config: FunctionConfig) -> list[Call]:
    """Hermes-style `<tool_call>{json}</tool_call>` and `<function=NAME>{json}</function>`."""
    calls: list[Call] = []
    if "<tool_call>" in text:
        for match in _TOOL_CALL_BLOCK.finditer(text):
            for obj in json_objects(match.group(1)):
                if isinstance(obj.get("name"), str) and "arguments" in obj:
                    calls.append(Call(obj["name"], _arguments_text(obj["arguments"], config)))
    if not calls and "<function=" in text:
        for match in _FUNCTION_TAG.finditer(text):
            name, body = match.group(1).strip(), match.group(2)
            params = {m.group(1).strip(): _parameter_value(m.group(2)) for m in _PARAMETER_TAG.finditer(body)}
            if params:  # Qwen3-Coder's <parameter=NAME>value</parameter>
                calls.append(Call(name, go_marshal(params)))
                continue
            objs = json_objects(body)
            if objs or not body.strip():
                calls.append(Call(name, _arguments_text(objs[0] if objs else {}, config)))
    return calls


def capture_text(text: str, config: FunctionConfig) -> str:
    for pattern in config.capture_llm_results:
        match = compile_regex(pattern).search(text)
        if match is not None and match.re.groups >= 1:
            return (match.group(1) or "").strip()
    return ""


def strip_markup(text: str) -> str:
    """The text around `<tool_call>` / `<function=>` blocks."""
    text = _TOOL_CALL_BLOCK.sub("", text)
    return _FUNCTION_TAG.sub("", text).strip()


@dataclass
class Outcome:
    text: str
    calls: list[Call]


def read_reply(raw: str, plan: LocalAIPlan) -> Outcome:
    """A whole reply on the LocalAI path: its text and its calls."""
    config = plan.config
    if plan.native or not plan.tools_requested:
        calls = parse_calls(raw, config)
        return Outcome(strip_markup(raw) if calls else raw, calls)
    captured = capture_text(raw, config)
    cleaned = _replace(raw, config.replace_llm_results)
    calls = parse_calls(cleaned, config)
    if not calls or calls[0].name == config.no_action:
        message = ""
        if calls:
            try:
                arguments = json.loads(calls[0].arguments or "{}")
            except ValueError:
                arguments = {}
            if isinstance(arguments, dict) and isinstance(arguments.get("message"), str):
                message = arguments["message"]
        return Outcome(message or captured or (cleaned if not calls else ""), [])
    if not plan.parallel:
        calls = calls[:1]
    return Outcome(captured, calls)


@dataclass
class ReplyShaping:
    """What LocalAI's config does to a reply: its function plan and its last touches."""

    plan: LocalAIPlan | None = None
    finetune: Any = None  # localai_config.Finetune, when the config has cutstrings & co.


def shaping(entry: Any, task: ChatTask | None) -> ReplyShaping | None:
    """The reply handling a model's LocalAI config asks for on a task (None: lokal's own)."""
    config = getattr(entry, "config", None)
    if config is None:
        return None
    function_plan = plan(config, task, renders_go=entry.templates.renders_chat) if task is not None else None
    touches = localai_config.finetune(config)
    if function_plan is None and not touches:
        return None
    return ReplyShaping(function_plan, touches if touches else None)


class ReplyReader:
    """One choice's text on the LocalAI path. A reply LocalAI parses or touches up is held
    until the choice ends, then told as text and tool-call deltas; on the native path
    (the fallback only) text streams as it comes and calls written in it are added at the
    end when the engine parsed none."""

    def __init__(self, shaping: ReplyShaping) -> None:
        self.plan = shaping.plan
        self.finetune = shaping.finetune
        self.buffer: list[str] = []
        self.engine_calls = False
        self.is_call = False

    @property
    def holds(self) -> bool:
        return self.finetune is not None or (self.plan is not None and not self.plan.native)

    def feed(self, text: str, finished: bool, engine_calls: bool = False) -> tuple[str, list[ToolCallDelta] | None]:
        self.buffer.append(text)
        self.engine_calls = self.engine_calls or engine_calls
        if not self.holds:
            if not finished or self.plan is None or self.engine_calls:
                return text, None
            return text, self._deltas(parse_calls("".join(self.buffer), self.plan.config))
        if not finished:
            return "", None
        whole = "".join(self.buffer)
        calls: list[Call] = []
        out = whole
        if self.plan is not None and not self.plan.native:
            outcome = read_reply(whole, self.plan)
            out, calls = outcome.text, outcome.calls
        elif self.plan is not None and not self.engine_calls:
            calls = parse_calls(whole, self.plan.config)
            out = strip_markup(whole) if calls else whole
        if self.finetune is not None and not calls:
            out = self.finetune.apply(out)
        return out, self._deltas(calls)

    def _deltas(self, calls: list[Call]) -> list[ToolCallDelta] | None:
        from lokal.models.functions import new_call_id

        if not calls:
            return None
        if self.plan is not None and not self.plan.parallel:
            calls = calls[:1]
        self.is_call = True
        deltas: list[ToolCallDelta] = []
        for position, call in enumerate(calls):
            deltas.append(ToolCallDelta(position, id=new_call_id(), name=call.name))
            deltas.append(ToolCallDelta(position, arguments=call.arguments))
        return deltas
