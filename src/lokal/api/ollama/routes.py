"""Ollama's routes under /api: chat, generate, embeddings, model listing and inspection.

Thin: each route reads its body (Ollama's clients and curl send JSON with any
content type, so the body is parsed here), resolves the model name, builds a
task and renders the answer. Model management (pull, delete, copy) is in
`manage.py`, behind the admin guard.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ValidationError
from starlette.background import BackgroundTask

from lokal import __version__
from lokal.api.generation import start
from lokal.api.images import loader_for
import lokal.api.ollama.models as catalog
from lokal.api.ollama.protocol import ChatRequest, EmbeddingsRequest, EmbedRequest, GenerateRequest, ShowRequest
from lokal.api.ollama.render import OllamaRenderer, Timer, now
from lokal.api.respond import respond
from lokal.errors import BadRequest, ModelUnavailableError
from lokal.models import serving
from lokal.models.catalog import ModelEntry
from lokal.models.planner import instance_for, main_task
from lokal.models.registry import ModelRegistry
from lokal.tasks import EmbedTask

#: The Ollama API level lokal follows: clients gate features on this number (VS Code
#: Copilot wants at least 0.6.4, Codex --oss 0.13.4 for /v1/responses). Checked against
#: Ollama 0.32.15's docs/api.md, docs/openapi.yaml, api/types.go and server/routes.go:
#: its local routes are lokal's (/v1/responses and /v1/messages since 0.13.x, /api/status,
#: blobs and create); what it sends to ollama.com (push, me, signout, experimental web
#: search and fetch) lokal does not do, and /api/status says so (cloud disabled).
#: Raise it with those files' diff checked against the routes.
OLLAMA_VERSION = "0.32.15"

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
    if registry.is_loaded(entry.name, instance_for(entry, task)):
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
    if not body.stream:
        timer.first_token()  # the first deltas have arrived (a stream's renderer marks them)
    after = _after(registry, entry, body.keep_alive_seconds)
    renderer = OllamaRenderer(kind, body.model, timer, body.top_logprobs if body.logprobs else None)
    return await respond(request, run, renderer, stream=body.stream, background=after)


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


#: What Ollama lists: models that complete (chat, text) or embed. Speech, reranker,
#: image models are not offered to Ollama clients, which take whatever is listed for chat.
LISTED_TASKS = frozenset({"chat", "complete", "embed"})


@router.get("/tags", summary="Ollama: the models that chat, complete or embed")
async def tags(request: Request) -> dict[str, Any]:
    return {"models": [catalog.listing(e) for e in _registry(request).entries
                       if e.ok and LISTED_TASKS & set(e.tasks)]}


@router.post("/show", summary="Ollama: one model's details, model_info and capabilities")
async def show(request: Request) -> dict[str, Any]:
    body = await read_body(request, ShowRequest)
    entry = catalog.resolve(_registry(request), body.target)
    if not entry.ok:
        raise ModelUnavailableError(body.target, entry.error or "unknown error")
    context = None
    if isinstance(entry, ModelEntry) and entry.file.gguf is not None and entry.tasks:
        try:  # the context a load uses (capped at the trained one), not only what the config asks
            context = _registry(request).plan(entry, main_task(entry)).options.context_size
        except Exception:  # noqa: BLE001 - a model that cannot plan shows the config's; its load says why
            context = None
    return catalog.show(entry, body.verbose, context)


@router.get("/ps", summary="Ollama: the models loaded now")
async def ps(request: Request) -> dict[str, Any]:
    registry = _registry(request)
    status = registry.status()
    idle_by_name: dict[str, float] = {}
    for instance in status.instances:
        seen = idle_by_name.get(instance.model)
        idle_by_name[instance.model] = instance.idle_seconds if seen is None else min(seen, instance.idle_seconds)
    out = []
    for entry in registry.entries:
        if entry.name not in idle_by_name:
            continue
        idle = idle_by_name[entry.name]
        if status.idle_timeout:
            expires = datetime.now(timezone.utc) + timedelta(seconds=max(0.0, status.idle_timeout - idle))
        else:  # never unloaded for idleness: as Ollama shows keep_alive -1
            expires = datetime.now(timezone.utc) + timedelta(days=365 * 292)
        row = catalog.listing(entry)
        row.pop("modified_at", None)
        row.pop("capabilities", None)
        task = "chat" if "chat" in entry.tasks else next(iter(sorted(entry.tasks)), "chat")
        try:
            context = registry.plan(entry, task).options.context_size
        except Exception:  # noqa: BLE001 - a model that loaded plans; this is only a report
            context = None
        row.update({"expires_at": expires.astimezone().isoformat(), "size_vram": 0,
                    "context_length": context or 0})
        out.append(row)
    return {"models": out}


@router.get("/version", summary="Ollama: the API version lokal follows")
async def version() -> dict[str, str]:
    return {"version": OLLAMA_VERSION}


@router.get("/status", summary="Ollama: the server's status (no ollama.com cloud here)")
async def status() -> dict[str, Any]:
    return {"cloud": {"disabled": True, "source": "config"}}


@root.get("/", summary="Ollama's probe: the server answers", response_class=PlainTextResponse)
async def running() -> PlainTextResponse:
    return PlainTextResponse(f"Ollama is running (lokal {__version__})")
