"""The OpenAI routes: models, chat completions, completions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request

from lokal.api.errors import APIError
from lokal.api.generation import respond
from lokal.api.protocol import ChatCompletionRequest, CompletionRequest
from lokal.models.config import ModelEntry
from lokal.models.prompting import EngineCall, plan_chat, plan_completion
from lokal.models.registry import ModelRegistry, UnknownModelError

router = APIRouter()


def _registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


@router.get("/models", summary="List the models this server serves")
async def list_models(request: Request) -> dict[str, Any]:
    created = request.app.state.started
    data = [{"id": e.name, "object": "model", "created": created, "owned_by": "lokal"}
            for e in _registry(request).entries if e.ok]
    return {"object": "list", "data": data}


@router.get("/models/{model_id:path}", summary="Describe one model")
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    entry = _registry(request).entry(model_id)  # unknown: 404
    if not entry.ok:
        raise UnknownModelError(model_id)
    return {"id": entry.name, "object": "model", "created": request.app.state.started, "owned_by": "lokal"}


async def _generate(request: Request, body: ChatCompletionRequest | CompletionRequest,
                    plan: Callable[[ModelEntry, dict[str, Any]], EngineCall], kind: str) -> Any:
    lease = await _registry(request).acquire(body.model)
    try:
        _check_slots(body, lease.backend.slots)
        call = plan(lease.entry, body.engine_params())
    except Exception:
        lease.release()
        raise
    return await respond(request, lease, call, kind=kind, stream=body.stream,
                         include_usage=body.include_usage, timeout=body.timeout)


def _check_slots(body: ChatCompletionRequest | CompletionRequest, slots: int | None) -> None:
    """The choices of one prompt are decoded side by side, each in a slot of its own
    (several prompts take their turns, so only n is bounded)."""
    if slots is not None and body.n > slots:
        raise APIError(400, f"n={body.n} asks for more choices than this model decodes at once "
                            f"({slots}, PARALLEL_REQUESTS). Ask for fewer, or raise PARALLEL_REQUESTS.",
                       param="n")


@router.post("/chat/completions", summary="Create a chat completion")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    return await _generate(request, body, plan_chat, "chat")


@router.post("/completions", summary="Create a text completion")
async def completions(body: CompletionRequest, request: Request) -> Any:
    return await _generate(request, body, plan_completion, "completion")
