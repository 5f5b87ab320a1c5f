"""lokal's own model routes: every catalog entry with its state, and load/unload.

`GET /lokal/models` lists every configured model (broken ones too, with the reason):
state (`loaded`, `loading`, `idle` or `broken`), its loaded instances (with their
worker process's pid under ENGINE_ISOLATION=process), tasks, engine
file name and size, and the context size a load would use. Any client the auth
middleware lets through may read it (as `/v1/models`).

`POST /lokal/models/{name}/load` loads a model for its main task (what a preload
would load) and answers when it is ready; `POST /lokal/models/{name}/unload` unloads
every instance of it once its requests are done. Both manage the server and are admin
routes (`lokal.api.admin.require_admin`). Errors are in OpenAI's envelope.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request

from lokal.api.admin import require_admin
from lokal.formats.modelfile import disk_size
from lokal.models.catalog import Entry, ModelEntry
from lokal.models.planner import main_task
from lokal.models.registry import ModelRegistry

router = APIRouter(prefix="/lokal", tags=["lokal"])


def _registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


def _context(registry: ModelRegistry, entry: Entry) -> tuple[int | None, int | None, str | None]:
    """(the context a load would use, the context the model was trained on, why the first
    differs from what the config asks), GGUF only."""
    if not isinstance(entry, ModelEntry) or entry.file.gguf is None or not entry.tasks:
        return None, None, None
    trained = entry.file.gguf.context_length
    try:
        plan = registry.plan(entry, main_task(entry))
    except Exception:  # noqa: BLE001 - a model that cannot plan shows no context; its load says why
        return None, trained, None
    return plan.options.context_size, trained, plan.context_note


def describe(registry: ModelRegistry, entry: Entry, size: int | None) -> dict[str, Any]:
    status = registry.status()
    instances = [{"purpose": i.purpose, "engine": i.engine, "in_use": i.in_use, "memory_bytes": i.memory_bytes,
                  "pid": i.pid} | ({"node": i.node} if i.node else {}) for i in status.of(entry.name)]
    failure = status.failed.get(entry.name)
    if not entry.ok:
        state = "broken"
    elif failure is not None:
        state = "failed"  # its engine crashed again and again: refused until a load clears it
    elif instances:
        state = "loaded"
    elif entry.name in status.loading:
        state = "loading"
    else:
        state = "idle"
    context, trained, note = _context(registry, entry)
    config = entry.config
    return {
        "name": entry.name,
        "state": state,
        "error": entry.error or failure,
        "tasks": sorted(entry.tasks),
        "kind": entry.file.kind if isinstance(entry, ModelEntry) else None,
        "backend": config.backend if config is not None else None,
        "file": entry.model_path.name if entry.model_path is not None else None,
        "size_bytes": size,
        "context_size": context,
        "trained_context": trained,
        "context_note": note,
        "instances": instances,
        "pending_downloads": [d.path.name for d in entry.pending_downloads] if entry.state == "pending" else [],
        "voices": list(entry.file.speech.voices) if isinstance(entry, ModelEntry) and entry.file.speech else [],
    }


@router.get("/models", summary="Every configured model with its state")
async def models(request: Request) -> dict[str, Any]:
    registry = _registry(request)
    entries = sorted(registry.entries, key=lambda e: e.name)
    sizes = await asyncio.to_thread(lambda: [disk_size(e.model_path) for e in entries])
    spares = registry.pool.spares
    workers = await asyncio.to_thread(spares.describe) if spares is not None else []
    return {"object": "list", "data": [describe(registry, e, s) for e, s in zip(entries, sizes)],
            "spare_workers": workers}


@router.get("/models/{name:path}/state", summary="One model with its state")
async def model(name: str, request: Request) -> dict[str, Any]:
    registry = _registry(request)
    entry = registry.entry(name)  # unknown: 404
    return describe(registry, entry, await asyncio.to_thread(disk_size, entry.model_path))


@router.post("/models/{name:path}/load", dependencies=[Depends(require_admin)],
             summary="Load a model for its main task")
async def load(name: str, request: Request) -> dict[str, Any]:
    registry = _registry(request)
    entry = registry.entry(name)  # unknown: 404; broken: the lease says why (503)
    registry.retry(entry.name)  # loading by hand is the retry a failed model waits for
    async with registry.lease(name, main_task(entry)):
        pass
    return describe(registry, registry.entry(name), await asyncio.to_thread(disk_size, entry.model_path))


@router.post("/models/{name:path}/unload", dependencies=[Depends(require_admin)],
             summary="Unload a model once its requests are done")
async def unload(name: str, request: Request) -> dict[str, Any]:
    registry = _registry(request)
    was_loaded = await registry.unload(name)  # unknown: 404
    entry = registry.entry(name)
    out = describe(registry, entry, await asyncio.to_thread(disk_size, entry.model_path))
    out["unloaded"] = was_loaded
    return out
