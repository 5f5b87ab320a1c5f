"""Sandboxed renderer for the Go ``text/template`` subset used by LocalAI prompt templates.

Data is plain dicts/lists/str/int/float/bool/None; ``.Name`` is a dict key lookup
only (never Python attribute access), nothing is evaluated with eval/exec and no
files are read.  Supported: text, ``{{- -}}`` trim markers, comments, fields,
variables, literals, function calls, parenthesised sub-expressions, pipelines,
``if``/``else if``/``with``/``else with``/``range``/``else``/``break``/``continue``.
Not supported: ``define``/``template``/``block``, methods, ``call``, ``slice``,
``html``/``js``/``urlquery``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

__all__ = ["TemplateError", "Template", "parse"]

MAX_RANGE_ITEMS = 100_000          # range iterations per render, all loops together
MAX_OUTPUT_CHARS = 10 * 1024 * 1024  # output size, and size of any single string value
MAX_WORK_CHARS = 10 * MAX_OUTPUT_CHARS  # total characters produced by function calls
MAX_NESTING = 100                  # nested blocks; also nested parentheses per action

_SPACE = " \t\r\n"


class TemplateError(ValueError):
    """Parse or execution error; ``str()`` is ``'<name>:<line>: <detail>'``."""

    def __init__(self, name: str, line: int, detail: str) -> None:
        self.name, self.line, self.detail = name, line, detail
        super().__init__(f"{name}:{line}: {detail}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (TemplateError, (self.name, self.line, self.detail))


class _FuncError(Exception):
    """Raised by template functions; turned into a TemplateError with the line."""


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


_MISSING: Any = object()  # "no piped value" marker

# ---------------------------------------------------------------------------
# Lexer
# ---------------------------------------------------------------------------

_IDENT = r"[^\W\d]\w*"
_FIELD_RE = re.compile(rf"(?:\.{_IDENT})+")
_VAR_RE = re.compile(rf"\$\w*((?:\.{_IDENT})*)")
_IDENT_RE = re.compile(_IDENT)
_NUM_RE = re.compile(
    r"[+-]?(?:0[xX][0-9a-fA-F_]+|0[bB][01_]+|0[oO][0-7_]+"
    r"|[0-9][0-9_]*(?:\.[0-9_]*)?(?:[eE][+-]?[0-9_]+)?|\.[0-9][0-9_]*(?:[eE][+-]?[0-9_]+)?)"
)
_COMMENT_END_RE = re.compile(r"[ \t\r\n]*(-)?}}")
_STRING_RE = re.compile(r'"((?:[^"\\\n]|\\.)*)"')
_CHAR_RE = re.compile(r"'((?:[^'\\\n]|\\.[0-9a-fA-F]*)+)'")
_KEYWORDS = {"if", "else", "end", "range", "with", "break", "continue", "define", "template", "block"}
_SIMPLE_ESC = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'",
               "a": "\a", "b": "\b", "f": "\f", "v": "\v"}


@dataclass(slots=True)
class _Tok:
    kind: str
    value: Any
    text: str
    adjacent: bool  # no whitespace before it (for "(...).Field" chains)


@dataclass(slots=True)
class _Text:
    text: str
    line: int


@dataclass(slots=True)
class _ActionItem:
    toks: list[_Tok]
    line: int


def _unquote(body: str) -> str:
    """Decode Go escape sequences in a quoted string body (raises ValueError)."""
    out: list[str] = []
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        e = body[i + 1] if i + 1 < n else ""
        if e in _SIMPLE_ESC:
            out.append(_SIMPLE_ESC[e])
            i += 2
        elif e in ("x", "u", "U"):
            size = {"x": 2, "u": 4, "U": 8}[e]
            digits = body[i + 2:i + 2 + size]
            if len(digits) != size or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise ValueError(f"invalid escape \\{e}{digits}")
            out.append(chr(int(digits, 16)) if int(digits, 16) <= 0x10FFFF else "\ufffd")
            i += 2 + size
        elif e and e in "01234567":
            digits = body[i + 1:i + 4]
            if len(digits) != 3 or not all(d in "01234567" for d in digits):
                raise ValueError(f"invalid escape \\{digits}")
            out.append(chr(int(digits, 8)))
            i += 4
        else:
            raise ValueError(f"invalid escape \\{e}")
    return "".join(out)


def _number(text: str) -> int | float:
    clean = text.replace("_", "")
    if re.fullmatch(r"[+-]?0[0-7]+", clean):
        return int(clean, 8)
    if not re.match(r"[+-]?0[xXbBoO]", clean) and any(c in clean for c in ".eE"):
        return float(clean)
    return int(clean, 0)


class _Lexer:
    """Splits source into text items and tokenised action items, applying trims."""

    def __init__(self, source: str, name: str) -> None:
        self.src, self.name = source, name
        self._pos, self._line = 0, 1

    def line_at(self, pos: int) -> int:
        if pos >= self._pos:
            self._line += self.src.count("\n", self._pos, pos)
        else:
            self._line -= self.src.count("\n", pos, self._pos)
        self._pos = pos
        return self._line

    def err(self, line: int, detail: str) -> TemplateError:
        return TemplateError(self.name, line, detail)

    def items(self) -> list[_Text | _ActionItem]:
        src, n = self.src, len(self.src)
        items: list[_Text | _ActionItem] = []
        pos, trim_next = 0, False
        while True:
            start = src.find("{{", pos)
            stop = n if start < 0 else start
            text, text_line = src[pos:stop], self.line_at(pos)
            if trim_next:
                stripped = text.lstrip(_SPACE)
                text_line += text.count("\n", 0, len(text) - len(stripped))
                text = stripped
            if start < 0:
                if text:
                    items.append(_Text(text, text_line))
                return items
            line = self.line_at(start)
            i = start + 2
            if src.startswith("-", i) and not (i + 1 < n and src[i + 1].isdigit()):
                text = text.rstrip(_SPACE)
                i += 1
            if text:
                items.append(_Text(text, text_line))
            j = i
            while j < n and src[j] in _SPACE:
                j += 1
            if src.startswith("/*", j):
                end = src.find("*/", j + 2)
                if end < 0:
                    raise self.err(line, "unclosed comment")
                m = _COMMENT_END_RE.match(src, end + 2)
                if not m:
                    raise self.err(line, "comment ends before closing delimiter")
                pos, trim_next = m.end(), m.group(1) is not None
                continue
            toks, pos, trim_next = self.action(i, line)
            items.append(_ActionItem(toks, line))

    def action(self, k: int, line: int) -> tuple[list[_Tok], int, bool]:
        src, n = self.src, len(self.src)
        toks: list[_Tok] = []
        while True:
            ws = k
            while k < n and src[k] in _SPACE:
                k += 1
            adjacent = k == ws
            if k >= n:
                raise self.err(line, "unclosed action")
            c = src[k]
            if src.startswith("}}", k):
                return toks, k + 2, False
            if src.startswith("-}}", k):
                return toks, k + 3, True
            nxt = src[k + 1] if k + 1 < n else ""
            if c == '"':
                m = _STRING_RE.match(src, k)
                if not m:
                    raise self.err(line, "unterminated quoted string")
                try:
                    tok = _Tok("lit", _unquote(m.group(1)), m.group(0), adjacent)
                except ValueError as e:
                    raise self.err(line, f"bad string literal: {e}") from None
                k = m.end()
            elif c == "`":
                end = src.find("`", k + 1)
                if end < 0:
                    raise self.err(line, "unterminated raw quoted string")
                tok = _Tok("lit", src[k + 1:end], src[k:end + 1], adjacent)
                k = end + 1
            elif c == "'":
                m = _CHAR_RE.match(src, k)
                try:
                    ch = _unquote(m.group(1)) if m else ""
                except ValueError:
                    ch = ""
                if len(ch) != 1:
                    raise self.err(line, "bad character constant")
                tok = _Tok("lit", ord(ch), m.group(0), adjacent)  # type: ignore[union-attr]
                k = m.end()  # type: ignore[union-attr]
            elif c.isdigit() or (c in "+-." and (nxt.isdigit() or (nxt == "." and c != "."))):
                m = _NUM_RE.match(src, k)
                end = m.end() if m else k + 1
                if not m or (end < n and (src[end].isalnum() or src[end] in "_.")):
                    bad = re.match(r"[\w.+-]*", src[k:]).group(0)  # type: ignore[union-attr]
                    raise self.err(line, f"bad number syntax: {bad!r}")
                try:
                    tok = _Tok("lit", _number(m.group(0)), m.group(0), adjacent)
                except ValueError:
                    raise self.err(line, f"bad number syntax: {m.group(0)!r}") from None
                k = end
            elif c == ".":
                m = _FIELD_RE.match(src, k)
                if m:
                    tok = _Tok("field", m.group(0)[1:].split("."), m.group(0), adjacent)
                    k = m.end()
                else:
                    tok = _Tok("dot", None, ".", adjacent)
                    k += 1
            elif c == "$":
                m = _VAR_RE.match(src, k)
                assert m is not None
                chain = m.group(1)[1:].split(".") if m.group(1) else []
                name = m.group(0)[: len(m.group(0)) - len(m.group(1))]
                tok = _Tok("var", (name, chain), m.group(0), adjacent)
                k = m.end()
            elif c == ":" and nxt == "=":
                tok, k = _Tok(":=", None, ":=", adjacent), k + 2
            elif c in "=|(),":
                tok, k = _Tok(c, None, c, adjacent), k + 1
            else:
                m = _IDENT_RE.match(src, k)
                if not m:
                    raise self.err(line, f"bad character {c!r} in action")
                word = m.group(0)
                if word in _KEYWORDS:
                    tok = _Tok("kw", word, word, adjacent)
                elif word in ("true", "false"):
                    tok = _Tok("lit", word == "true", word, adjacent)
                elif word == "nil":
                    tok = _Tok("nil", None, word, adjacent)
                else:
                    tok = _Tok("ident", word, word, adjacent)
                k = m.end()
            toks.append(tok)


# ---------------------------------------------------------------------------
# Parse tree
# ---------------------------------------------------------------------------

@dataclass(slots=True)
class _Lit:
    value: Any
    text: str


@dataclass(slots=True)
class _Dot:
    text: str = "."


@dataclass(slots=True)
class _Field:
    names: list[str]
    text: str


@dataclass(slots=True)
class _Var:
    name: str
    chain: list[str]
    text: str


@dataclass(slots=True)
class _Func:
    name: str
    text: str


@dataclass(slots=True)
class _Pipe:
    decl: list[str]   # declared/assigned variables
    assign: bool      # "=" rather than ":="
    cmds: list[list[Any]]
    line: int


@dataclass(slots=True)
class _Sub:
    pipe: _Pipe
    chain: list[str]
    text: str = "(...)"


_Node = _Lit | _Dot | _Field | _Var | _Func | _Sub


@dataclass(slots=True)
class _Action:
    pipe: _Pipe
    line: int


@dataclass(slots=True)
class _Block:
    """if/with (branches of (pipe, body)) or range (a single branch), plus optional else."""
    kind: str
    line: int
    branches: list[tuple[_Pipe, list[Any]]]
    else_body: list[Any] | None = None


@dataclass(slots=True)
class _Jump:
    kind: str  # "break" or "continue"
    line: int


@dataclass(slots=True)
class _Frame:
    block: _Block
    parent: list[Any]
    mark: int
    in_else: bool = False


def _b(word: str) -> str:
    return "{{" + word + "}}"


class _Parser:
    def __init__(self, source: str, name: str) -> None:
        self.name = name
        self.items = _Lexer(source, name).items()
        self.scope: list[str] = ["$"]
        self.toks: list[_Tok] = []
        self.i = 0
        self.line = 0

    def err(self, detail: str, line: int | None = None) -> TemplateError:
        return TemplateError(self.name, self.line if line is None else line, detail)

    def parse(self) -> list[Any]:
        root: list[Any] = []
        body: list[Any] = root
        stack: list[_Frame] = []
        for item in self.items:
            if isinstance(item, _Text):
                body.append(item)
                continue
            self.toks, self.line = item.toks, item.line
            first = item.toks[0] if item.toks else None
            kw = first.value if first is not None and first.kind == "kw" else None
            if kw in ("if", "with", "range"):
                if len(stack) >= MAX_NESTING:
                    raise self.err(f"blocks nested too deeply (limit {MAX_NESTING})")
                mark = len(self.scope)
                block = _Block(kw, item.line, [(self.pipeline(1, kw), [])])
                body.append(block)
                stack.append(_Frame(block, body, mark))
                body = block.branches[0][1]
            elif kw == "else":
                if not stack:
                    raise self.err(f"unexpected {_b('else')}")
                fr = stack[-1]
                if fr.in_else:
                    raise self.err(f"unexpected {_b('else')} after {_b('else')}")
                if len(item.toks) > 1:
                    sub = item.toks[1]
                    if sub.kind == "kw" and sub.value == fr.block.kind and sub.value != "range":
                        body = []
                        fr.block.branches.append((self.pipeline(2, sub.value), body))
                        continue
                    raise self.err(f"unexpected {sub.text!r} after else in {_b(fr.block.kind)}")
                fr.in_else = True
                body = fr.block.else_body = []
            elif kw == "end":
                if len(item.toks) > 1:
                    raise self.err(f"unexpected {item.toks[1].text!r} in end")
                if not stack:
                    raise self.err(f"unexpected {_b('end')}")
                fr = stack.pop()
                del self.scope[fr.mark:]
                body = fr.parent
            elif kw in ("break", "continue"):
                if len(item.toks) > 1:
                    raise self.err(f"unexpected {item.toks[1].text!r} in {kw}")
                if not any(f.block.kind == "range" and not f.in_else for f in stack):
                    raise self.err(f"{_b(kw)} outside {_b('range')}")
                body.append(_Jump(kw, item.line))
            elif kw is not None:
                raise self.err(f"{_b(kw)} is not supported")
            else:
                body.append(_Action(self.pipeline(0, "command"), item.line))
        if stack:
            fr = stack[-1]
            raise self.err(f"unclosed {_b(fr.block.kind)}: missing {_b('end')}", fr.block.line)
        return root

    # -- pipelines ---------------------------------------------------------
    def peek(self, off: int = 0) -> _Tok | None:
        j = self.i + off
        return self.toks[j] if j < len(self.toks) else None

    def pipeline(self, start: int, context: str) -> _Pipe:
        self.i = start
        if self.peek() is None:
            raise self.err(f"missing value for {context}")
        decl: list[str] = []
        assign = False
        t0, t1 = self.peek(), self.peek(1)
        if t0 is not None and t0.kind == "var" and not t0.value[1] and t1 is not None:
            if t1.kind in (":=", "="):
                decl, assign, self.i = [t0.value[0]], t1.kind == "=", self.i + 2
            elif t1.kind == ",":
                t2, t3 = self.peek(2), self.peek(3)
                if (t2 is not None and t2.kind == "var" and not t2.value[1]
                        and t3 is not None and t3.kind in (":=", "=")):
                    if context != "range":
                        raise self.err(f"too many declarations in {context}")
                    decl, assign = [t0.value[0], t2.value[0]], t3.kind == "="
                    self.i += 4
        if assign:
            for v in decl:
                if v not in self.scope:
                    raise self.err(f'undefined variable "{v}"')
        pipe = self.pipe_body(decl, assign, 0)
        t = self.peek()
        if t is not None:
            raise self.err(f"unexpected {t.text!r} in {context}")
        if decl and not assign:
            self.scope.extend(decl)
        return pipe

    def pipe_body(self, decl: list[str], assign: bool, depth: int) -> _Pipe:
        cmds = [self.command(depth)]
        while (t := self.peek()) is not None and t.kind == "|":
            self.i += 1
            cmds.append(self.command(depth))
        return _Pipe(decl, assign, cmds, self.line)

    def command(self, depth: int) -> list[_Node]:
        args: list[_Node] = []
        while (t := self.peek()) is not None and t.kind not in ("|", ")"):
            args.append(self.operand(depth))
        if not args:
            raise self.err("missing value for command")
        if isinstance(args[0], _Lit) and args[0].text == "nil":
            raise self.err("nil is not a command")
        return args

    def operand(self, depth: int) -> _Node:
        t = self.toks[self.i]
        self.i += 1
        k = t.kind
        if k == "lit":
            return _Lit(t.value, t.text)
        if k == "nil":
            return _Lit(None, "nil")
        if k == "dot":
            return _Dot()
        if k == "field":
            return _Field(t.value, t.text)
        if k == "var":
            name, chain = t.value
            if name not in self.scope:
                raise self.err(f'undefined variable "{name}"')
            return _Var(name, chain, t.text)
        if k == "ident":
            if t.value not in _FUNCS:
                raise self.err(f'function "{t.value}" not defined')
            return _Func(t.value, t.value)
        if k == "(":
            if depth + 1 > MAX_NESTING:
                raise self.err(f"parentheses nested too deeply (limit {MAX_NESTING})")
            pipe = self.pipe_body([], False, depth + 1)
            close = self.peek()
            if close is None or close.kind != ")":
                raise self.err("unclosed left paren")
            self.i += 1
            nxt = self.peek()
            if nxt is not None and nxt.kind == "field" and nxt.adjacent:
                self.i += 1
                return _Sub(pipe, nxt.value)
            return _Sub(pipe, [])
        if k == "kw":
            raise self.err(f"unexpected keyword {t.value!r} in command")
        raise self.err(f"unexpected {t.text!r} in operand")


# ---------------------------------------------------------------------------
# Values, formatting and functions
# ---------------------------------------------------------------------------

def _type_name(v: Any) -> str:
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float64"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (list, tuple)):
        return "[]interface {}"
    if isinstance(v, Mapping):
        return "map[string]interface {}"
    return type(v).__name__


def _truth(v: Any) -> bool:
    if v is None:
        return False
    if isinstance(v, (bool, int, float)):
        return v != 0
    if isinstance(v, (str, list, tuple, Mapping)):
        return len(v) > 0
    return True


def _sorted_keys(d: Mapping[Any, Any]) -> list[Any]:
    try:
        return sorted(d)
    except TypeError:
        return sorted(d, key=lambda k: (type(k).__name__, repr(k)))


def _go_float(v: float) -> str:
    """Go's %v for float64: shortest repr, exponent form when exp < -4 or >= 6."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == 0:
        return "-0" if math.copysign(1.0, v) < 0 else "0"
    sign = "-" if v < 0 else ""
    tup = Decimal(repr(abs(v))).as_tuple()
    dp = len(tup.digits) + int(tup.exponent)  # position of the decimal point
    digits = "".join(map(str, tup.digits)).rstrip("0") or "0"
    exp = dp - 1
    if exp < -4 or exp >= 6:
        mant = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mant}e{'+' if exp >= 0 else '-'}{abs(exp):02d}"
    if dp <= 0:
        return f"{sign}0.{'0' * -dp}{digits}"
    if dp >= len(digits):
        return sign + digits + "0" * (dp - len(digits))
    return f"{sign}{digits[:dp]}.{digits[dp:]}"


def _fmt_value(v: Any, nested: bool = False) -> str:
    """Go's default ``{{.X}}`` / ``%v`` printing."""
    if v is None:
        return "<nil>" if nested else ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _go_float(v)
    if isinstance(v, (list, tuple)):
        return "[" + " ".join(_fmt_value(x, True) for x in v) + "]"
    if isinstance(v, Mapping):
        return "map[" + " ".join(
            f"{_fmt_value(k, True)}:{_fmt_value(v[k], True)}" for k in _sorted_keys(v)) + "]"
    return str(v)


def _go_quote(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch in "\n\t\r\a\b\f\v":
            out.append({"\n": "\\n", "\t": "\\t", "\r": "\\r", "\a": "\\a",
                        "\b": "\\b", "\f": "\\f", "\v": "\\v"}[ch])
        elif ch.isprintable():
            out.append(ch)
        else:
            cp = ord(ch)
            out.append(f"\\x{cp:02x}" if cp < 0x80 else f"\\u{cp:04x}" if cp < 0x10000 else f"\\U{cp:08x}")
    out.append('"')
    return "".join(out)


def _limit_check(total: int) -> None:
    if total > MAX_OUTPUT_CHARS:
        raise _FuncError("template output too large")


def _str_arg(v: Any) -> str:
    if v is None:
        return ""
    if not isinstance(v, str):
        raise _FuncError(f"wrong type for value; expected string; got {_type_name(v)}")
    return v


def _cmp_kind(v: Any) -> str:
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    return "other"


def _fn_eq(a: Any, *rest: Any) -> bool:
    ka = _cmp_kind(a)
    for b in rest:
        kb = _cmp_kind(b)
        if ka == "nil" or kb == "nil":
            if ka == kb:
                return True
            continue
        if ka != kb:
            raise _FuncError("incompatible types for comparison")
        if ka == "other":
            raise _FuncError(f"non-comparable type {_type_name(a)}")
        if a == b:
            return True
    return False


def _ordered(a: Any, b: Any) -> None:
    ka, kb = _cmp_kind(a), _cmp_kind(b)
    if ka not in ("number", "string") or kb not in ("number", "string"):
        raise _FuncError("invalid type for comparison")
    if ka != kb:
        raise _FuncError("incompatible types for comparison")


def _fn_lt(a: Any, b: Any) -> bool:
    _ordered(a, b)
    return bool(a < b)


def _fn_le(a: Any, b: Any) -> bool:
    _ordered(a, b)
    return bool(a <= b)


def _fn_len(v: Any) -> int:
    if isinstance(v, str):
        return len(v.encode("utf-8"))  # Go counts bytes
    if isinstance(v, (list, tuple, Mapping)):
        return len(v)
    raise _FuncError(f"len of {'nil pointer' if v is None else 'type ' + _type_name(v)}")


def _fn_index(item: Any, *keys: Any) -> Any:
    for k in keys:
        if isinstance(item, Mapping):
            try:
                item = item.get(k)
            except TypeError:
                raise _FuncError(f"value has type {_type_name(k)}; should be string") from None
        elif isinstance(item, (list, tuple, str)):
            if isinstance(k, bool) or not isinstance(k, int):
                raise _FuncError(f"cannot index slice/array with type {_type_name(k)}")
            seq = item.encode("utf-8") if isinstance(item, str) else item
            if not 0 <= k < len(seq):
                raise _FuncError(f"index out of range: {k}")
            item = seq[k]
        elif item is None:
            raise _FuncError("index of untyped nil")
        else:
            raise _FuncError(f"can't index item of type {_type_name(item)}")
    return item


def _fn_print(*args: Any) -> str:
    out, total = [], 0
    for i, a in enumerate(args):
        if i and not isinstance(a, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        s = _fmt_value(a)
        total += len(s) + 1
        _limit_check(total)
        out.append(s)
    return "".join(out)


def _fn_println(*args: Any) -> str:
    parts = [_fmt_value(a) for a in args]
    _limit_check(sum(map(len, parts)) + len(parts))
    return " ".join(parts) + "\n"


_VERB_RE = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d*))?(.)?", re.S)


def _bad_verb(verb: str, a: Any) -> str:
    return f"%!{verb}({_type_name(a)}={_fmt_value(a, True)})"


def _fmt_verb(verb: str, flags: str, width: int | None, prec: int | None, a: Any) -> str:
    numeric = False
    if verb in "vs":
        s = _fmt_value(a)
        if verb == "s" and prec is not None:
            s = s[:prec]
    elif verb == "q":
        s = _go_quote(a if isinstance(a, str) else _fmt_value(a))
    elif verb == "t":
        if not isinstance(a, bool):
            return _bad_verb(verb, a)
        s = "true" if a else "false"
    elif verb in "dxXobc":
        if isinstance(a, str) and verb in "xX":
            s = a.encode("utf-8").hex()
            s = s.upper() if verb == "X" else s
        elif isinstance(a, bool) or not isinstance(a, int):
            return _bad_verb(verb, a)
        elif verb == "c":
            s = chr(a) if 0 <= a <= 0x10FFFF else "\ufffd"
        else:
            numeric = True
            s = format(a, ("#" if "#" in flags and verb != "d" else "") + verb)
            if a >= 0 and "+" in flags:
                s = "+" + s
            elif a >= 0 and " " in flags:
                s = " " + s
    elif verb in "eEfFgG":
        if isinstance(a, bool) or not isinstance(a, (int, float)):
            return _bad_verb(verb, a)
        numeric, x = True, float(a)
        if not math.isfinite(x) or (verb in "gG" and prec is None):
            s = _go_float(x)
            s = s.upper() if verb == "G" else s
            if x >= 0 and "+" in flags and not s.startswith("+"):
                s = "+" + s
        else:
            s = format(x, ("+" if "+" in flags else "") + f".{6 if prec is None else prec}{verb}")
    else:
        return _bad_verb(verb, a)
    if width is not None and len(s) < width:
        if "-" in flags:
            s = s.ljust(width)
        elif "0" in flags and numeric:
            sign = s[0] if s[:1] in ("+", "-", " ") else ""
            s = sign + s[len(sign):].rjust(width - len(sign), "0")
        else:
            s = s.rjust(width)
    return s


def _fn_printf(fmt: Any, *args: Any) -> str:
    fmt = _str_arg(fmt)
    out: list[str] = []
    total, ai, pos = 0, 0, 0

    def add(s: str) -> None:
        nonlocal total
        total += len(s)
        _limit_check(total)
        out.append(s)

    for m in _VERB_RE.finditer(fmt):
        add(fmt[pos:m.start()])
        pos = m.end()
        flags, width, prec, verb = m.groups()
        if verb is None:
            add("%!(NOVERB)")
            continue
        if verb == "%":
            add("%")
            continue
        if len(width or "") > 8 or len(prec or "") > 8:
            raise _FuncError("template output too large")
        w = int(width) if width else None
        p = None if prec is None else int(prec or "0")
        _limit_check(max(w or 0, p or 0))
        if ai >= len(args):
            add(f"%!{verb}(MISSING)")
            continue
        add(_fmt_verb(verb, flags, w, p, args[ai]))
        ai += 1
    add(fmt[pos:])
    if ai < len(args):
        add("%!(EXTRA " + ", ".join(f"{_type_name(a)}={_fmt_value(a, True)}" for a in args[ai:]) + ")")
    return "".join(out)


def _fn_to_json(v: Any) -> str:
    try:
        return json.dumps(v, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return ""  # sprig's toJson swallows marshalling errors


def _fn_replace(old_v: Any, new_v: Any, s_v: Any) -> str:
    old, new, s = _str_arg(old_v), _str_arg(new_v), _str_arg(s_v)
    count = len(s) + 1 if old == "" else s.count(old)
    _limit_check(len(s) + count * (len(new) - len(old)))
    return s.replace(old, new)


def _fn_join(sep_v: Any, v: Any) -> str:
    sep = _str_arg(sep_v)
    if v is None:
        items: Iterable[Any] = []
    elif isinstance(v, (list, tuple)):
        items = [x for x in v if x is not None]
    else:
        items = [v]
    parts, total = [], 0
    for x in items:
        s = _fmt_value(x)
        total += len(s) + len(sep)
        _limit_check(total)
        parts.append(s)
    return sep.join(parts)


def _fn_default(d: Any, *given: Any) -> Any:
    return given[0] if given and _truth(given[0]) else d


def _strfn(f: Callable[..., Any]) -> Callable[..., Any]:
    return lambda *a: f(*map(_str_arg, a))


# name -> (implementation, min args, max args or None)
_FUNCS: dict[str, tuple[Callable[..., Any] | None, int, int | None]] = {
    "and": (None, 1, None),
    "or": (None, 1, None),
    "not": (lambda v: not _truth(v), 1, 1),
    "eq": (_fn_eq, 2, None),
    "ne": (lambda a, b: not _fn_eq(a, b), 2, 2),
    "lt": (_fn_lt, 2, 2),
    "le": (_fn_le, 2, 2),
    "gt": (lambda a, b: _fn_lt(b, a), 2, 2),
    "ge": (lambda a, b: _fn_le(b, a), 2, 2),
    "len": (_fn_len, 1, 1),
    "index": (_fn_index, 1, None),
    "print": (_fn_print, 0, None),
    "println": (_fn_println, 0, None),
    "printf": (_fn_printf, 1, None),
    "toJson": (_fn_to_json, 1, 1),
    "trim": (_strfn(str.strip), 1, 1),
    "lower": (_strfn(str.lower), 1, 1),
    "upper": (_strfn(str.upper), 1, 1),
    "contains": (_strfn(lambda sub, s: sub in s), 2, 2),
    "hasPrefix": (_strfn(lambda pre, s: s.startswith(pre)), 2, 2),
    "hasSuffix": (_strfn(lambda suf, s: s.endswith(suf)), 2, 2),
    "trimPrefix": (_strfn(lambda pre, s: s[len(pre):] if s.startswith(pre) else s), 2, 2),
    "trimSuffix": (_strfn(lambda suf, s: s[:-len(suf)] if suf and s.endswith(suf) else s), 2, 2),
    "replace": (_fn_replace, 3, 3),
    "join": (_fn_join, 2, 2),
    "default": (_fn_default, 1, 2),
    "empty": (lambda v: not _truth(v), 1, 1),
}

# ---------------------------------------------------------------------------
# Evaluator
# ---------------------------------------------------------------------------


class _Exec:
    def __init__(self, name: str, data: Any) -> None:
        self.name = name
        self.vars: list[list[Any]] = [["$", data]]
        self.out: list[str] = []
        self.size = self.work = self.iters = 0
        self.line = 1

    def err(self, detail: str) -> TemplateError:
        return TemplateError(self.name, self.line, detail)

    def emit(self, s: str) -> None:
        self.size += len(s)
        if self.size > MAX_OUTPUT_CHARS:
            raise self.err("template output too large")
        self.out.append(s)

    def walk(self, nodes: list[Any], dot: Any) -> None:
        for node in nodes:
            self.line = node.line
            t = type(node)
            if t is _Text:
                self.emit(node.text)
            elif t is _Action:
                val = self.pipe(node.pipe, dot)
                if not node.pipe.decl:
                    self.emit(_fmt_value(val))
            elif t is _Block:
                if node.kind == "range":
                    self.exec_range(node, dot)
                else:
                    self.exec_if(node, dot)
            else:
                raise _Break() if node.kind == "break" else _Continue()

    def exec_if(self, node: _Block, dot: Any) -> None:
        mark = len(self.vars)
        try:
            for pipe, body in node.branches:
                self.line = pipe.line
                val = self.pipe(pipe, dot)
                if _truth(val):
                    self.walk(body, val if node.kind == "with" else dot)
                    return
            if node.else_body is not None:
                self.walk(node.else_body, dot)
        finally:
            del self.vars[mark:]

    def range_items(self, val: Any) -> Iterator[tuple[Any, Any]]:
        if val is None:
            return iter(())
        if isinstance(val, (list, tuple)):
            return enumerate(val)
        if isinstance(val, Mapping):
            return ((k, val[k]) for k in _sorted_keys(val))
        if isinstance(val, int) and not isinstance(val, bool):
            return ((i, i) for i in range(val))
        raise self.err(f"range can't iterate over {_fmt_value(val)[:50]}")

    def exec_range(self, node: _Block, dot: Any) -> None:
        pipe, body = node.branches[0]
        mark = len(self.vars)
        try:
            val = self.eval_cmds(pipe, dot)
            ran = False
            for key, elem in self.range_items(val):
                ran = True
                self.iters += 1
                if self.iters > MAX_RANGE_ITEMS:
                    self.line = node.line
                    raise self.err(f"range limit exceeded ({MAX_RANGE_ITEMS} iterations)")
                inner = len(self.vars)
                values = [elem] if len(pipe.decl) == 1 else [key, elem]
                for name, v in zip(pipe.decl, values, strict=False):
                    self.bind(name, v, pipe.assign)
                try:
                    self.walk(body, elem)
                except _Break:
                    break
                except _Continue:
                    pass
                finally:
                    del self.vars[inner:]
            if not ran and node.else_body is not None:
                self.line = node.line
                self.walk(node.else_body, dot)
        finally:
            del self.vars[mark:]

    def bind(self, name: str, value: Any, assign: bool) -> None:
        if assign:
            for slot in reversed(self.vars):
                if slot[0] == name:
                    slot[1] = value
                    return
        self.vars.append([name, value])

    def get_var(self, name: str) -> Any:
        for slot in reversed(self.vars):
            if slot[0] == name:
                return slot[1]
        raise self.err(f'undefined variable "{name}"')

    def eval_cmds(self, pipe: _Pipe, dot: Any) -> Any:
        val = _MISSING
        for cmd in pipe.cmds:
            val = self.command(cmd, dot, val)
        return val

    def pipe(self, pipe: _Pipe, dot: Any) -> Any:
        val = self.eval_cmds(pipe, dot)
        for name in pipe.decl:
            self.bind(name, val, pipe.assign)
        return val

    def command(self, args: list[_Node], dot: Any, final: Any) -> Any:
        first = args[0]
        if isinstance(first, _Func):
            return self.call(first.name, args[1:], dot, final)
        if len(args) > 1 or final is not _MISSING:
            raise self.err(f"can't give argument to non-function {first.text}")
        return self.arg(first, dot)

    def arg(self, node: _Node, dot: Any) -> Any:
        if isinstance(node, _Lit):
            return node.value
        if isinstance(node, _Dot):
            return dot
        if isinstance(node, _Field):
            return self.chain(dot, node.names)
        if isinstance(node, _Var):
            return self.chain(self.get_var(node.name), node.chain)
        if isinstance(node, _Func):
            return self.call(node.name, [], dot, _MISSING)
        return self.chain(self.eval_cmds(node.pipe, dot), node.chain)

    def chain(self, obj: Any, names: list[str]) -> Any:
        for name in names:
            if isinstance(obj, Mapping):
                obj = obj.get(name)
            elif obj is not None:  # a missing key stays a zero value down the chain
                raise self.err(f"can't evaluate field {name} in type {_type_name(obj)}")
        return obj

    def call(self, name: str, argnodes: list[_Node], dot: Any, final: Any) -> Any:
        fn, lo, hi = _FUNCS[name]
        count = len(argnodes) + (final is not _MISSING)
        if count < lo or (hi is not None and count > hi):
            want = str(lo) if lo == hi else f"at least {lo}" if hi is None else f"{lo} to {hi}"
            raise self.err(f"wrong number of args for {name}: want {want} got {count}")
        if fn is None:  # and / or: short-circuit, return the deciding operand
            for i, node in enumerate(argnodes):
                val = self.arg(node, dot)
                if i == len(argnodes) - 1 and final is _MISSING:
                    return val
                if _truth(val) != (name == "and"):
                    return val
            return final
        args = [self.arg(a, dot) for a in argnodes]
        if final is not _MISSING:
            args.append(final)
        try:
            res = fn(*args)
        except (_FuncError, ValueError, TypeError, OverflowError) as e:
            raise self.err(f"error calling {name}: {e}") from None
        if isinstance(res, str):
            self.work += len(res)
            if len(res) > MAX_OUTPUT_CHARS or self.work > MAX_WORK_CHARS:
                raise self.err("template output too large")
        return res


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------


class Template:
    """A parsed template; ``render`` may be called many times, from any thread."""

    def __init__(self, source: str, name: str = "template") -> None:
        if not isinstance(source, str):
            raise TypeError("template source must be a str")
        self.name = name
        self.source = source
        try:
            self._root = _Parser(source, name).parse()
        except RecursionError:
            raise TemplateError(name, 1, "template nested too deeply") from None

    def render(self, data: Mapping[str, Any]) -> str:
        ex = _Exec(self.name, data)
        try:
            ex.walk(self._root, data)
        except RecursionError:
            raise ex.err("recursion too deep while rendering") from None
        return "".join(ex.out)

    def __repr__(self) -> str:
        return f"Template(name={self.name!r})"


def parse(source: str, name: str = "template") -> Template:
    """Parse ``source``; raises TemplateError on syntax errors."""
    return Template(source, name)
