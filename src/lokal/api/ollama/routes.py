"""Ollama's routes under /api: chat, generate, embeddings, model listing and inspection.

Thin: each route reads its body (Ollama's clients and curl send JSON with any
content type, so the body is parsed here), resolves the model name, builds a
task and renders the answer. Model management (pull, delete, copy) is in
`manage.py`, behind the admin guard.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.background import BackgroundTask

from lokal import __version__
from lokal.api.errors import as_lokal_error
from lokal.api.generation import start
from lokal.api.images import loader_for
from lokal.api.ollama import models as catalog
from lokal.api.ollama.protocol import ChatRequest, EmbeddingsRequest, EmbedRequest, GenerateRequest, ShowRequest
from lokal.api.ollama.render import Shaper, Timer, ndjson, now
from lokal.errors import BadRequest, ModelUnavailableError
from lokal.models import serving
from lokal.models.config import ModelEntry
from lokal.models.planner import instance_for, main_task, plan_load
from lokal.models.registry import ModelRegistry
from lokal.tasks import EmbedTask

#: The Ollama API level lokal follows (docs/api.md, api/types.go of Ollama 0.12/0.13):
#: clients gate features on this number (VS Code Copilot wants at least 0.6.4).
OLLAMA_VERSION = "0.13.0"

NDJSON = "application/x-ndjson"

router = APIRouter()
root = APIRouter()

Body = TypeVar("Body", bound=BaseModel)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def read_body(request: Request, kind: type[Body]) -> Body:
    """The request body as kind, with Ollama's error messages (a 400 for any bad body)."""
    raw = await request.body()
    if not raw.strip():
        raise BadRequest("missing request body")
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
        json.dumps(data, ensure_ascii=False).encode("utf-8")  # lone UTF-16 surrogates
    except (ValueError, UnicodeError) as exc:
        raise BadRequest(f"invalid JSON in the request body: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(_validation_message(exc)) from None


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if not str(p)[:1].isupper())
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if first.get("type") == "missing":
        return f"{where} is required"
    return f"invalid value for {where}: {message}" if where else message


def _registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


async def _load(registry: ModelRegistry, entry: ModelEntry, task: str) -> int:
    """Load the model for task if it is not loaded yet; the nanoseconds it took."""
    if registry.pool.is_loaded(entry.name, instance_for(entry, task)):
        return 0
    started = time.perf_counter_ns()
    async with registry.lease(entry.name, task):
        pass
    return time.perf_counter_ns() - started


def _after(registry: ModelRegistry, entry: ModelEntry, keep_alive: float | None) -> BackgroundTask | None:
    """keep_alive 0: unload once the answer is sent (other durations: the pool's idle timeout)."""
    if keep_alive == 0:
        return BackgroundTask(registry.unload, entry.name)
    return None


async def _generate(request: Request, body: ChatRequest | GenerateRequest, entry: ModelEntry,
                    timer: Timer, kind: str) -> Any:
    registry = _registry(request)
    task = await body.to_task_with_images(entry.name, loader_for(request))
    timer.load_ns = await _load(registry, entry, task.task)
    run = await start(request, task)
    timer.first_token()
    shaper = Shaper(kind, body.model, timer)
    after = _after(registry, entry, body.keep_alive_seconds)
    if not body.stream:
        deltas = await run.collect()
        return JSONResponse(shaper.whole(deltas, run.usage), background=after)

    async def lines() -> AsyncIterator[bytes]:
        try:
            async for batch in run.batches():
                data = shaper.lines(batch)
                if data:
                    yield data
            yield ndjson(shaper.final(run.usage))
        except Exception as exc:  # noqa: BLE001 - after the first token: reported in-stream
            yield ndjson({"error": as_lokal_error(exc).message})

    return StreamingResponse(lines(), media_type=NDJSON, background=after)


async def _load_or_unload(registry: ModelRegistry, entry: ModelEntry, keep_alive: float | None,
                          task: str) -> str:
    if keep_alive == 0:
        await registry.unload(entry.name)
        return "unload"
    await _load(registry, entry, task)
    return "load"


@router.post("/chat", summary="Ollama: chat (NDJSON stream unless stream is false)")
async def chat(request: Request) -> Any:
    timer = Timer()
    body = await read_body(request, ChatRequest)
    entry = catalog.resolve(_registry(request), body.model)
    if not body.messages:
        reason = await _load_or_unload(_registry(request), entry, body.keep_alive_seconds, "chat")
        return {"model": body.model, "created_at": now(), "message": {"role": "assistant", "content": ""},
                "done_reason": reason, "done": True}
    return await _generate(request, body, entry, timer, "chat")


@router.post("/generate", summary="Ollama: generate from a prompt (raw: no template)")
async def generate(request: Request) -> Any:
    timer = Timer()
    body = await read_body(request, GenerateRequest)
    entry = catalog.resolve(_registry(request), body.model)
    if body.suffix:
        raise BadRequest(f"model '{body.model}' does not support insert (suffix)", param="suffix")
    if not body.prompt and not body.images:
        task = "complete" if body.raw else "chat"
        reason = await _load_or_unload(_registry(request), entry, body.keep_alive_seconds, task)
        return {"model": body.model, "created_at": now(), "response": "", "done": True, "done_reason": reason}
    return await _generate(request, body, entry, timer, "generate")


@router.post("/embed", summary="Ollama: embeddings of one or more inputs")
async def embed(request: Request) -> Any:
    timer = Timer()
    body = await read_body(request, EmbedRequest)
    registry = _registry(request)
    entry = catalog.resolve(registry, body.model)
    timer.load_ns = await _load(registry, entry, "embed")
    out: dict[str, Any] = {"model": body.model, "embeddings": []}
    if body.inputs:
        result = await serving.embed(registry, body.to_task(entry.name))
        out["embeddings"] = result.vectors
        out["prompt_eval_count"] = result.prompt_tokens
    out["total_duration"] = time.perf_counter_ns() - timer.start
    out["load_duration"] = timer.load_ns
    return JSONResponse(out, background=_after(registry, entry, body.keep_alive_seconds))


@router.post("/embeddings", summary="Ollama (legacy): the embedding of one prompt")
async def embeddings(request: Request) -> Any:
    body = await read_body(request, EmbeddingsRequest)
    registry = _registry(request)
    entry = catalog.resolve(registry, body.model)
    if not body.prompt:
        await _load(registry, entry, "embed")
        return {"embedding": []}
    result = await serving.embed(registry, EmbedTask(entry.name, [body.prompt]))
    return JSONResponse({"embedding": result.vectors[0]},
                        background=_after(registry, entry, body.keep_alive_seconds))


@router.get("/tags", summary="Ollama: the models this server has")
async def tags(request: Request) -> dict[str, Any]:
    return {"models": [catalog.listing(e) for e in _registry(request).entries if e.ok]}


@router.post("/show", summary="Ollama: one model's details, model_info and capabilities")
async def show(request: Request) -> dict[str, Any]:
    body = await read_body(request, ShowRequest)
    entry = catalog.resolve(_registry(request), body.target)
    if not entry.ok:
        raise ModelUnavailableError(body.target, entry.error or "unknown error")
    context = None
    if entry.file is not None and entry.file.gguf is not None and entry.tasks:
        try:  # the context a load uses (capped at the trained one), not only what the config asks
            context = plan_load(entry, main_task(entry), _registry(request).defaults).options.context_size
        except Exception:  # noqa: BLE001 - a model that cannot plan shows the config's; its load says why
            context = None
    return catalog.show(entry, body.verbose, context)


@router.get("/ps", summary="Ollama: the models loaded now")
async def ps(request: Request) -> dict[str, Any]:
    registry = _registry(request)
    pool = registry.pool
    by_name: dict[str, float] = {}
    for (name, _instance), loaded in pool.loaded().items():
        by_name[name] = max(by_name.get(name, 0.0), loaded.last_used)
    out = []
    for entry in registry.entries:
        if entry.name not in by_name:
            continue
        idle = time.monotonic() - by_name[entry.name]
        if pool.idle_timeout:
            expires = datetime.now(timezone.utc) + timedelta(seconds=max(0.0, pool.idle_timeout - idle))
        else:  # never unloaded for idleness: as Ollama shows keep_alive -1
            expires = datetime.now(timezone.utc) + timedelta(days=365 * 292)
        row = catalog.listing(entry)
        row.pop("modified_at", None)
        row.pop("capabilities", None)
        task = "chat" if "chat" in entry.tasks else next(iter(sorted(entry.tasks)), "chat")
        try:
            context = plan_load(entry, task, registry.defaults).options.context_size
        except Exception:  # noqa: BLE001 - a model that loaded plans; this is only a report
            context = None
        row.update({"expires_at": expires.astimezone().isoformat(), "size_vram": 0,
                    "context_length": context or 0})
        out.append(row)
    return {"models": out}


@router.get("/version", summary="Ollama: the API version lokal follows")
async def version() -> dict[str, str]:
    return {"version": OLLAMA_VERSION}


@root.get("/", summary="Ollama's probe: the server answers", response_class=PlainTextResponse)
async def running() -> PlainTextResponse:
    return PlainTextResponse(f"Ollama is running (lokal {__version__})")
