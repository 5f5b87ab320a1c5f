"""Parse tree node classes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
