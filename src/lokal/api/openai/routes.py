"""The OpenAI routes: models, chat completions, completions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from lokal.api.errors import error_body
from lokal.api.images import loader_for
from lokal.api.generation import SSE_HEADERS, Run, sse, start
from lokal.api.openai.protocol import ChatCompletionRequest, CompletionRequest
from lokal.api.openai.render import Aggregator, Shaper
from lokal.errors import UnknownModelError
from lokal.models.config import ModelEntry
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
    if entry.vision:
        capabilities.append("vision")
    model = {"id": entry.name, "object": "model", "created": created, "owned_by": "lokal",
             "capabilities": capabilities}
    speech = entry.file.speech if entry.file is not None else None
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


async def _answer(request: Request, run: Run, shaper: Shaper, *, stream: bool, include_usage: bool) -> Any:
    if not stream:
        aggregator = Aggregator(shaper)
        for chunk in shaper.shape(await run.collect()):
            aggregator.add(chunk)
        return JSONResponse(aggregator.result(run.usage))

    async def events() -> AsyncIterator[bytes]:
        try:
            async for batch in run.batches():
                # Everything the engine sent since the last write goes out in one write.
                data = b"".join(sse(chunk) for chunk in shaper.shape(batch))
                if data:
                    yield data
            yield (sse(shaper.usage_chunk(run.usage)) if include_usage else b"") + sse("[DONE]")
        except Exception as exc:  # noqa: BLE001 - reported to the client in-stream
            yield sse(error_body(exc, request.url.path)) + sse("[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)


@router.post("/chat/completions", summary="Create a chat completion")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    task = await body.to_task_with_images(loader_for(request))
    run = await start(request, task)
    return await _answer(request, run, Shaper("chat", body.model, legacy=body.legacy_functions),
                         stream=body.stream, include_usage=body.include_usage)


@router.post("/completions", summary="Create a text completion")
async def completions(body: CompletionRequest, request: Request) -> Any:
    task = body.to_task()
    run = await start(request, task)  # echo of a prompt it cannot read back: 400 before this
    echo = None
    if body.echo:
        echo = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)  # type: ignore[arg-type]
    top = body.logprobs if body.logprobs is not None else body.n_probs
    shaper = Shaper("completion", body.model, echo=echo, n=body.n, top_logprobs=top)
    return await _answer(request, run, shaper, stream=body.stream, include_usage=body.include_usage)
