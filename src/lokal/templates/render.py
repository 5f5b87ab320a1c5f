"""Evaluator, and the public ``Template``/``parse``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from lokal.templates.builtins import _FUNCS, _fmt_value, _FuncError, _sorted_keys, _truth, _type_name
from lokal.templates.common import MAX_OUTPUT_CHARS, MAX_RANGE_ITEMS, MAX_WORK_CHARS, TemplateError
from lokal.templates.lexer import _Text
from lokal.templates.nodes import _Action, _Block, _Dot, _Field, _Func, _Lit, _Node, _Pipe, _Var
from lokal.templates.parser import _Parser


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


_MISSING: Any = object()  # "no piped value" marker


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
