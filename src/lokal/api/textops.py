"""The engine's text utilities (tokenize, detokenize, apply-template, props, slots) on a
model a request names, for the API families that offer them (llama-server's routes,
LocalAI's /v1/tokenize)."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from lokal.engines.base import TEXT_OPS
from lokal.errors import BadRequest, UnknownModelError
from lokal.models.catalog import ModelEntry
from lokal.models.registry import ModelRegistry

GENERATES = ("chat", "complete")


def pick_model(registry: ModelRegistry, name: str | None) -> ModelEntry:
    """The model a request names, else the only one that chats or completes (a 400 naming
    them when there is a choice)."""
    if name:
        entry = registry.entry(name)
        if not entry.ok:
            raise UnknownModelError(name)
        return entry
    able = [e for e in registry.entries if e.ok and any(t in e.tasks for t in GENERATES)]
    if len(able) == 1:
        return able[0]
    names = ", ".join(sorted(e.name for e in able)) or "none"
    raise BadRequest(f"model is required: this server has {len(able)} models that generate ({names}); "
                     "name one in `model`.", param="model")


async def text_op(request: Request, name: str | None, op: str, payload: dict[str, Any]) -> Any:
    """The engine's answer to one of its text utilities, on the model named."""
    assert op in TEXT_OPS
    registry: ModelRegistry = request.app.state.registry
    entry = pick_model(registry, name)
    task = next((t for t in GENERATES if t in entry.tasks), "chat")
    async with registry.lease(entry.name, task) as lease:
        return await lease.run(lease.engine.text_op, op, payload)
