"""The GBNF grammar LocalAI's function config asks for: one JSON object naming a function and
its arguments, shaped by the grammar options (parallel calls, mixed mode, a prefix, lazy
triggers)."""

from __future__ import annotations

import json
from typing import Any

import re2

from lokal.models.localai_functions.config import FunctionConfig

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


