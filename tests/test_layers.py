"""The layering, checked on the source: imports flow one way and never in a circle.

cli -> api -> install -> models -> engines -> the bottom (tasks, errors, formats,
templates, transfer, metrics, logs, settings). A module may import its own layer
and the layers below it, never one above. Every import counts, module-level or
inside a function: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS = [
    ("cli", ["lokal.cli", "lokal.__main__", "lokal.scale.app"]),
    ("api", ["lokal.api"]),
    ("install", ["lokal.install"]),
    ("models", ["lokal.models", "lokal.scale"]),
    ("engines", ["lokal.engines"]),
    ("bottom", ["lokal.tasks", "lokal.errors", "lokal.formats", "lokal.templates", "lokal.transfer", "lokal.threadnames",
                "lokal.metrics", "lokal.logs", "lokal.settings", "lokal"]),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in SRC.joinpath("lokal").rglob("*.py")}


def _layer(module: str) -> int:
    best: tuple[int, int] | None = None  # (prefix length, layer index): the longest prefix wins
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), index)
    assert best is not None, module
    return best[1]


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The lokal modules that module imports (resolved to modules that exist)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name.startswith("lokal") and name != module:
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def test_no_import_runs_up_the_layers() -> None:
    wrong = []
    for module, imported in _graph().items():
        for target in imported:
            if _layer(target) < _layer(module) and target != "lokal":
                wrong.append(f"{module} ({LAYERS[_layer(module)][0]}) imports {target} "
                             f"({LAYERS[_layer(target)][0]})")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_no_import_circles() -> None:
    graph = _graph()
    # Package __init__ files that only hold a docstring do not make a cycle; real modules do.
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt == "lokal":
                continue
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("family", ["openai", "localai"])
def test_api_families_do_not_import_each_other(family: str) -> None:
    graph = _graph()
    own = f"lokal.api.{family}"
    others = [m for m in graph if m.startswith("lokal.api.") and m.count(".") >= 2
              and not m.startswith(own) and m.split(".")[2] in ("openai", "localai", "ollama",
                                                                 "anthropic", "responses")]
    for module, imported in graph.items():
        if module.startswith(own):
            assert not (imported & set(others)), f"{module} imports another API family"
