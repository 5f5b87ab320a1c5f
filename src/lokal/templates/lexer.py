"""Lexer: splits template source into text and tokenised actions; Go string/number unquoting."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from lokal.templates.common import TemplateError

_SPACE = " \t\r\n"

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
