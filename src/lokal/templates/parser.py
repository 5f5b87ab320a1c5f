"""Parser: turns the lexer's items into a tree of nodes, checking blocks, variables and functions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lokal.templates.builtins import _FUNCS
from lokal.templates.common import MAX_NESTING, TemplateError
from lokal.templates.lexer import _Lexer, _Text, _Tok
from lokal.templates.nodes import (
    _Action,
    _Block,
    _Dot,
    _Field,
    _Func,
    _Jump,
    _Lit,
    _Node,
    _Pipe,
    _Sub,
    _Var,
)


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
