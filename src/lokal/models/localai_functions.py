"""Tool calls the way a LocalAI model config sets them up: the `function:` block and
`template.function`.

A config that says nothing about functions keeps lokal's own JSON envelope (see
`functions`). A config with a `function:` block or a `template.function`, rendered with
LocalAI's Go templates, is served as LocalAI serves it:

* the prompt: `template.function` (when the request has tools) renders the
  conversation with `.Functions`, else `template.chat`; each message goes through
  `template.chat_message` with `.FunctionCall` (a past call) and `.RoleName` "tool"
  for results;
* the grammar (unless `function.grammar.disable`): one JSON object naming a function
  (`function_name_key`, default `name`) and its arguments (`function_arguments_key`,
  default `arguments`), the functions being the request's plus the "no action"
  function (`no_action_function_name`, default `answer`, unless `disable_no_action`)
  that carries a reply in `message`. The grammar options change its root:
  `parallel_calls` (an array of calls, one per line unless
  `disable_parallel_new_lines`), `mixed_mode` (free text around the JSON, or only
  free text with `no_mixed_free_string`), `expect_strings_after_json`, `prefix`
  (a literal before the JSON), `properties_order`; `triggers` make the grammar lazy
  (it applies from a trigger word on);
* the reply, once whole: `replace_llm_results` rewrite it, `capture_llm_results`
  take the text to return beside calls, `replace_function_results` rewrite it for
  parsing, then calls come from `response_regex` (named groups for name and
  arguments, `argument_regex` turning `key=value` pairs into JSON), or from the
  JSON objects in the text (or in what `json_regex_match` captures), and last from
  `<tool_call>` / `<function=NAME>` markup. A call of the no-action function is a
  reply. `automatic_tool_parsing_fallback` wraps a non-JSON argument string as
  `{"query": ...}` and lets a model whose chat template owns tools (native) have
  calls written as text parsed too.

Regular expressions are RE2 (as Go's are): linear time whatever a gallery sends.
Calls leave through `ToolCallDelta`s like every other tool call, so every API family
gets them. The reply is parsed when it is whole (LocalAI does the same): a streamed
answer on this path arrives at its end.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import re2
from pydantic import BaseModel, ConfigDict, Field, field_validator

from lokal.models import localai_config
from lokal.models.localai_config import compile_regex
from lokal.tasks import ChatTask, Message, Tool, ToolCallDelta

log = logging.getLogger(__name__)


def _patterns(value: Any) -> Any:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if isinstance(items, list):
        for item in items:
            if isinstance(item, str):
                compile_regex(item)
    return items


class ReplaceResult(BaseModel):
    model_config = ConfigDict(extra="allow")

    key: str = ""
    value: str = ""

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        compile_regex(value)
        return value


class GrammarTrigger(BaseModel):
    model_config = ConfigDict(extra="allow")

    word: str = ""
    at_start: bool = False


class GrammarConfig(BaseModel):
    """`function.grammar`."""

    model_config = ConfigDict(extra="allow")

    parallel_calls: bool = False
    disable_parallel_new_lines: bool = False
    mixed_mode: bool = False
    no_mixed_free_string: bool = False
    disable: bool = False
    prefix: str = ""
    expect_strings_after_json: bool = False
    properties_order: str = ""
    schema_type: str = ""
    triggers: list[GrammarTrigger] = Field(default_factory=list)

    @field_validator("schema_type")
    @classmethod
    def _schema(cls, value: str) -> str:
        if value not in ("", "json", "llama3.1"):
            raise ValueError("schema_type must be json or llama3.1")
        return value


class FunctionConfig(BaseModel):
    """`function:` of a LocalAI model config."""

    model_config = ConfigDict(extra="allow")

    disable_no_action: bool = False
    no_action_function_name: str = ""
    no_action_description_name: str = ""
    grammar: GrammarConfig = Field(default_factory=GrammarConfig)
    response_regex: list[str] = Field(default_factory=list)
    json_regex_match: list[str] = Field(default_factory=list)
    argument_regex: list[str] = Field(default_factory=list)
    argument_regex_key_name: str = ""
    argument_regex_value_name: str = ""
    replace_function_results: list[ReplaceResult] = Field(default_factory=list)
    replace_llm_results: list[ReplaceResult] = Field(default_factory=list)
    capture_llm_results: list[str] = Field(default_factory=list)
    function_name_key: str = ""
    function_arguments_key: str = ""
    automatic_tool_parsing_fallback: bool = False
    xml_format_preset: str = ""
    disable_peg_parser: bool = False

    @field_validator("response_regex", "json_regex_match", "argument_regex", "capture_llm_results",
                     mode="before")
    @classmethod
    def _regexes(cls, value: Any) -> Any:
        return _patterns(value)

    @property
    def name_key(self) -> str:
        return self.function_name_key or "name"

    @property
    def arguments_key(self) -> str:
        return self.function_arguments_key or "arguments"

    @property
    def no_action(self) -> str:
        return self.no_action_function_name or "answer"

    @property
    def no_action_description(self) -> str:
        return self.no_action_description_name or "use this action to answer without performing any action"


# Grammar -----------------------------------------------------------------------------

_SPACE = '" "?'
_PRIMITIVES = {
    "boolean": '("true" | "false") space',
    "number": '("-"? ([0-9] | [1-9] [0-9]*)) ("." [0-9]+)? ([eE] [-+]? [0-9]+)? space',
    "integer": '("-"? ([0-9] | [1-9] [0-9]*)) space',
    "string": r'"\"" ( [^"\\] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F]) )* "\"" space',
    "null": '"null" space',
}
_VALUE = ('object | array | string | number | boolean | null')
_GENERIC = {
    "value": _VALUE,
    "object": '"{" space ( string ":" space value ("," space string ":" space value)* )? "}" space',
    "array": '"[" space ( value ("," space value)* )? "]" space',
}
_FREESTRING = r'( [^\x00] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F]) )* space'


def _literal(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


class _Grammar:
    """JSON schema to GBNF, the subset tool parameters use (objects, arrays, enums, consts,
    one-of choices, the scalar types); anything else is any JSON value."""

    def __init__(self, prop_order: str = "") -> None:
        self.rules: dict[str, str] = {"space": _SPACE}
        self.order = [p.strip() for p in prop_order.split(",") if p.strip()]

    def add(self, name: str, rule: str) -> str:
        base = re2.sub(r"[^a-zA-Z0-9-]+", "-", name) or "rule"
        key, n = base, 1
        while key in self.rules and self.rules[key] != rule:
            n += 1
            key = f"{base}{n}"
        self.rules[key] = rule
        return key

    def primitive(self, kind: str) -> str:
        if kind in _GENERIC:
            for dep in ("string", "number", "boolean", "null"):
                self.rules.setdefault(dep, _PRIMITIVES[dep])
            for name, rule in _GENERIC.items():
                self.rules.setdefault(name, rule)
            return kind
        self.rules.setdefault(kind, _PRIMITIVES[kind])
        return kind

    def visit(self, schema: Any, name: str) -> str:  # noqa: C901 - one case per schema form
        if not isinstance(schema, dict):
            return self.primitive("value")
        if "const" in schema:
            return self.add(name, f"{_literal(json.dumps(schema['const'], ensure_ascii=False))} space")
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            options = " | ".join(_literal(json.dumps(v, ensure_ascii=False)) for v in schema["enum"])
            return self.add(name, f"({options}) space")
        for key in ("oneOf", "anyOf"):
            if isinstance(schema.get(key), list) and schema[key]:
                parts = [self.visit(s, f"{name}-{i}") for i, s in enumerate(schema[key])]
                return self.add(name, " | ".join(parts))
        kind = schema.get("type")
        if isinstance(kind, list):
            parts = [self.visit(dict(schema, type=k), f"{name}-{k}") for k in kind]
            return self.add(name, " | ".join(parts))
        if kind == "object" or (kind is None and isinstance(schema.get("properties"), dict)):
            props = schema.get("properties")
            if not isinstance(props, dict) or not props:
                return self.primitive("object")
            names = list(props)
            ordered = [p for p in self.order if p in props] + [p for p in names if p not in self.order]
            items = []
            for i, prop in enumerate(ordered):
                rule = self.visit(props[prop], f"{name}-{prop}")
                sep = '"," space ' if i else ""
                items.append(f'{sep}{_literal(json.dumps(prop, ensure_ascii=False))} space ":" space {rule}')
            return self.add(name, '"{" space ' + " ".join(items) + ' "}" space')
        if kind == "array":
            items = self.visit(schema.get("items"), f"{name}-item") if "items" in schema else self.primitive("value")
            return self.add(name, f'"[" space ( {items} ("," space {items})* )? "]" space')
        if kind in _PRIMITIVES:
            return self.primitive(kind)
        return self.primitive("value")


def build_grammar(functions: list[dict[str, Any]], config: FunctionConfig) -> str:
    """The GBNF for a reply that calls one of functions (or several, or talks), as the
    config's grammar options say."""
    options = config.grammar
    grammar = _Grammar(options.properties_order)
    calls = []
    for index, function in enumerate(functions):
        params = function.get("parameters") if isinstance(function.get("parameters"), dict) else {}
        arguments = {"type": "object", "properties": params.get("properties") or {}}
        calls.append({"type": "object", "properties": {config.name_key: {"const": function["name"]},
                                                        config.arguments_key: arguments}})
    if options.schema_type == "llama3.1":
        # Llama 3.1's own call syntax: <function=NAME>{arguments}</function>
        alternatives = []
        for index, call in enumerate(calls):
            name = call["properties"][config.name_key]["const"]
            args = grammar.visit(call["properties"][config.arguments_key], f"realvalue-{index}-arguments")
            alternatives.append(f'"<function=" {_literal(name)} ">" {args} "</function>"')
        value = grammar.add("realvalue", " | ".join(alternatives))
    else:
        value = grammar.visit({"oneOf": calls} if len(calls) != 1 else calls[0], "realvalue")
    if value != "realvalue":
        grammar.rules["realvalue"] = value
    lines = [f"{name} ::= {rule}" for name, rule in grammar.rules.items()]
    swap = options.parallel_calls or options.mixed_mode or bool(options.prefix)
    if not swap:
        return "\n".join(lines + ["root ::= realvalue"])
    root = "arr | realvalue" if options.parallel_calls else "realvalue"
    free = "freestring" if options.no_mixed_free_string else "mixedstring"
    if options.prefix:
        prefix = _literal(options.prefix)
        if options.mixed_mode:
            root = f"( {prefix} ({root}) | {free} )" if options.parallel_calls else f"( {prefix} {root} | {free} )"
        else:
            root = f"{prefix} ({root})"
    elif options.mixed_mode:
        root = f"{free} | {root}"
    newline = "" if options.disable_parallel_new_lines else "\\n"
    lines.append(f"root ::= {root}")
    lines.append(f'arr ::= "[{newline}" ( realvalue (",{newline}" realvalue)* )? "]"')
    lines.append(f"freestring ::= {_FREESTRING}")
    if options.parallel_calls:
        mixed = ("freestring | freestring arr freestring | (freestring realvalue freestring)* | realvalue | arr"
                 if options.expect_strings_after_json else
                 "freestring | freestring arr | freestring realvalue | realvalue | arr")
    else:
        mixed = ("freestring | (freestring realvalue freestring)* | realvalue" if options.expect_strings_after_json
                 else "freestring | freestring realvalue | realvalue")
    lines.append(f"mixedstring ::= {mixed}")
    return "\n".join(lines)


# The prompt ----------------------------------------------------------------------------

def _go_json(value: Any) -> Any:
    """A value as Go's encoding/json would order it: map keys sorted."""
    if isinstance(value, dict):
        return {k: _go_json(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_go_json(v) for v in value]
    return value


@dataclass
class LocalAIPlan:
    """How one chat request's functions run on the LocalAI path."""

    config: FunctionConfig
    functions: list[dict[str, Any]]  # what `.Functions` shows the template
    grammar: str | None  # GBNF, or None when the config turns the grammar off
    native: bool = False  # the model's chat template owns tools; only the fallback parses text
    parallel: bool = True  # more than one call per turn may come out
    tools_requested: bool = True
    lazy_triggers: list[dict[str, Any]] = field(default_factory=list)


def uses_localai_functions(config: Any) -> bool:
    """Whether a model config sets functions up LocalAI's way (a `function:` block or a
    `template.function`)."""
    return getattr(config, "function", None) is not None or bool(getattr(config.template, "function", None))


def plan(config: Any, task: ChatTask, *, renders_go: bool) -> LocalAIPlan | None:
    """The LocalAI function plan for a task, or None when lokal's own paths serve it."""
    fconfig: FunctionConfig = getattr(config, "function", None) or FunctionConfig()
    if not renders_go:
        # The GGUF's own template renders (use_tokenizer_template): llama.cpp owns tools,
        # as in LocalAI; text calls are parsed only when the config asks for the fallback.
        if fconfig.automatic_tool_parsing_fallback:
            return LocalAIPlan(fconfig, [], None, native=True, tools_requested=bool(task.tools))
        return None
    if not uses_localai_functions(config):
        return None
    if not task.tools or task.tool_choice == "none":
        if fconfig.automatic_tool_parsing_fallback:
            return LocalAIPlan(fconfig, [], None, tools_requested=False)
        return None
    tools: list[Tool] = task.tools
    offered = [{"name": t.name, "description": t.description, "parameters": t.parameters or {}} for t in tools]
    # What `.Functions` shows a Go template: LocalAI's Function struct (Name, Description,
    # Strict, Parameters), its parameters a map (keys in Go's sorted order).
    functions = [{"Name": t.name, "Description": t.description, "Strict": False,
                  "Parameters": _go_json(t.parameters or {})} for t in tools]
    if not fconfig.grammar.disable and not fconfig.disable_no_action:
        offered.append({"name": fconfig.no_action, "description": fconfig.no_action_description,
                        "parameters": {"properties": {"message": {
                            "type": "string", "description": "The message to reply the user with"}}}})
    if task.tool_choice == "required":  # a call must come: the grammar offers no reply
        offered = offered[:len(tools)]
    elif task.tool_choice != "auto":
        offered = [f for f in offered if f["name"] == task.tool_choice]
    grammar = None if fconfig.grammar.disable else build_grammar(offered, fconfig)
    triggers = [{"type": 1, "value": t.word} for t in fconfig.grammar.triggers if t.word]
    return LocalAIPlan(fconfig, functions, grammar, parallel=task.parallel_tool_calls is not False,
                       lazy_triggers=triggers)


def message_data(message: Message) -> dict[str, Any]:
    """What LocalAI's chat_message template sees of a message beyond its text."""
    data: dict[str, Any] = {}
    if message.tool_calls:
        data["FunctionCall"] = [{"index": i, "id": c.id, "type": "function",
                                 "function": {"name": c.name, "arguments": c.arguments}}
                                for i, c in enumerate(message.tool_calls)]
    return data


# Parsing the reply -------------------------------------------------------------------

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
    text = json.dumps(_go_json(value), ensure_ascii=False, separators=(",", ":"))
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
