"""The OpenAI routes: models, chat completions, completions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from lokal.api.generation import start
from lokal.api.images import loader_for
from lokal.api.openai.protocol import ChatCompletionRequest, CompletionRequest
from lokal.api.openai.render import OpenAIRenderer, Shaper
from lokal.api.respond import respond
from lokal.errors import UnknownModelError
from lokal.models.catalog import ModelEntry
from lokal.models.registry import ModelRegistry
from lokal.tasks import TASKS

router = APIRouter()


def _registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


@router.get("/models", summary="List the models this server serves")
async def list_models(request: Request) -> dict[str, Any]:
    created = request.app.state.started
    registry = _registry(request)
    data = [_model(registry, e, created) for e in registry.entries if e.ok]
    return {"object": "list", "data": data}


def _model(registry: ModelRegistry, entry: ModelEntry, created: int) -> dict[str, Any]:
    """OpenAI's model object, with lokal's `capabilities`: the tasks the model serves
    (chat, complete, embed, rerank, transcribe, speak, vad) and `vision` when it takes images
    (a speech model lists its `voices`); a
    model refused after repeated engine crashes says so (until it is reloaded)."""
    capabilities = [t for t in TASKS if t in entry.tasks]
    if isinstance(entry, ModelEntry) and entry.vision:
        capabilities.append("vision")
    model = {"id": entry.name, "object": "model", "created": created, "owned_by": "lokal",
             "capabilities": capabilities}
    speech = entry.file.speech if isinstance(entry, ModelEntry) else None
    if speech is not None and speech.voices:  # a text-to-speech model: the voices it speaks
        model["voices"] = list(speech.voices)
    reason = registry.failure(entry.name)
    if reason:
        model.update(status="failed", error=reason)
    return model


@router.get("/models/{model_id:path}", summary="Describe one model")
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    entry = _registry(request).entry(model_id)  # unknown: 404
    if not entry.ok:
        raise UnknownModelError(model_id)
    return _model(_registry(request), entry, request.app.state.started)


@router.post("/chat/completions", summary="Create a chat completion")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    task = await body.to_task_with_images(loader_for(request))
    run = await start(request, task)
    renderer = OpenAIRenderer(Shaper("chat", body.model, legacy=body.legacy_functions),
                              include_usage=body.include_usage, progress=body.return_progress)
    return await respond(request, run, renderer, stream=body.stream)


@router.post("/completions", summary="Create a text completion")
async def completions(body: CompletionRequest, request: Request) -> Any:
    task = body.to_task()
    run = await start(request, task)  # echo of a prompt it cannot read back: 400 before this
    echo = None
    if body.echo:
        echo = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)  # type: ignore[arg-type]
    top = body.logprobs if body.logprobs is not None else body.n_probs
    shaper = Shaper("completion", body.model, echo=echo, n=body.n, top_logprobs=top)
    renderer = OpenAIRenderer(shaper, include_usage=body.include_usage, progress=body.return_progress)
    return await respond(request, run, renderer, stream=body.stream)
