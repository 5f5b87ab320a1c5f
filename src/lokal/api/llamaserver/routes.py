"""llama-server's text routes, as its clients (editor plugins, llama.cpp's own tools) call them.

* `POST /tokenize` `{content, add_special (false), parse_special (true), with_pieces
  (false)}` -> `{tokens}` (ids, or `{id, piece}` objects with with_pieces), by the model's
  own tokenizer; `POST /detokenize` `{tokens}` -> `{content}`.
* `POST /apply-template` `{messages, tools...}` -> `{prompt}`: the prompt lokal would send
  for that chat (the model's config, its LocalAI templates or the GGUF's own template).
* `POST /infill` `{input_prefix, input_suffix, input_extra, prompt, stream, n_predict,
  ...}`: fill in the middle in the model's own FIM format; answered as llama-server's
  `/completion` (`content`, `stop`, `stop_type`, `tokens_predicted`, `tokens_evaluated`),
  streamed as its `data: {"content", "stop"}` events.
* `GET /props`: the model's generation settings, slots, chat template (read-only; the
  model's file name, never the server's path). `GET /slots`: what every slot holds
  and does, its prompt included, so an admin route.

lokal serves several models, so each takes `model` (in the body, or `?model=` on the GET
routes); left out, it is the only model that chats or completes, else a 400 naming them.
Errors are in OpenAI's envelope, as llama-server's are.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import Field

from lokal import tasks
from lokal.api.admin import require_admin
from lokal.api.errors import openai_envelope
from lokal.api.generation import start
from lokal.api.respond import SSE_COMMENT, respond, sse
from lokal.api.openai.protocol import ChatCompletionRequest, _Request, _SamplingRequest
from lokal.api.textops import pick_model, text_op
from lokal.errors import LokalError
from lokal.models.prompting import plan_chat
from lokal.models.registry import ModelRegistry

router = APIRouter(tags=["llama-server"])
admin_router = APIRouter(tags=["llama-server"], dependencies=[Depends(require_admin)])

class TokenizeRequest(_Request):
    model: str | None = None
    content: str
    add_special: bool = False
    parse_special: bool = True
    with_pieces: bool = False


class DetokenizeRequest(_Request):
    model: str | None = None
    tokens: list[int] = Field(default_factory=list, max_length=1_000_000)


class ApplyTemplateRequest(ChatCompletionRequest):
    model: str | None = Field(None, min_length=1, max_length=256)  # type: ignore[assignment]


class InfillRequest(_SamplingRequest):
    model: str | None = Field(None, min_length=1, max_length=256)  # type: ignore[assignment]
    input_prefix: str = ""
    input_suffix: str = ""
    input_extra: list[dict[str, str]] = Field(default_factory=list, max_length=1000)
    prompt: str = ""  # the start of the middle, after the FIM middle token


@router.post("/tokenize", summary="llama-server: tokenize text with the model's tokenizer")
async def tokenize(body: TokenizeRequest, request: Request) -> Any:
    payload = body.model_dump(exclude={"model"})
    return await text_op(request, body.model, "tokenize", payload)


@router.post("/detokenize", summary="llama-server: token ids back to text")
async def detokenize(body: DetokenizeRequest, request: Request) -> Any:
    return await text_op(request, body.model, "detokenize", {"tokens": body.tokens})


@router.post("/apply-template", summary="llama-server: the prompt a chat request makes")
async def apply_template(body: ApplyTemplateRequest, request: Request) -> dict[str, Any]:
    registry: ModelRegistry = request.app.state.registry
    entry = pick_model(registry, body.model)
    task = body.model_copy(update={"model": entry.name}).to_task()
    async with registry.lease(entry.name, "chat") as lease:
        call = plan_chat(lease.entry, task)
        if call.mode == "completion":  # rendered by the config's LocalAI templates
            return {"prompt": call.body["prompt"]}
        payload = {k: call.body[k] for k in ("messages", "tools", "tool_choice", "parallel_tool_calls")
                   if k in call.body}
        return await lease.run(lease.engine.text_op, "apply-template", payload)


@router.get("/props", summary="llama-server: the model's settings (read-only)")
async def props(request: Request, model: str | None = None) -> Any:
    answer = await text_op(request, model, "props", {})
    if isinstance(answer, dict) and isinstance(answer.get("model_path"), str):
        answer["model_path"] = answer["model_path"].replace("\\", "/").rsplit("/", 1)[-1]  # no server paths
    return answer


@admin_router.get("/slots", summary="llama-server: each slot's state and prompt (admin)")
async def slots(request: Request, model: str | None = None) -> Any:
    return await text_op(request, model, "slots", {})


class InfillRenderer:
    """llama-server's /completion shape for an infill: `data: {"content", "stop": false}` per
    batch, a closing object with `stop: true` and the counts (the whole answer: that object
    with all the content)."""

    media_type = "text/event-stream"

    def __init__(self, model: str) -> None:
        self.model = model
        self.deltas: list[tasks.Delta] = []

    def start(self) -> bytes:
        return b""

    def feed(self, deltas: list[tasks.Delta]) -> bytes:
        self.deltas.extend(deltas)
        text = "".join(d.text for d in deltas)
        return sse({"content": text, "stop": False}) if text else b""

    def keepalive(self) -> bytes:
        return SSE_COMMENT

    def end(self, usage: tasks.Usage) -> bytes:
        return sse(self._final("", usage))

    def fail(self, err: LokalError) -> bytes:
        return sse(openai_envelope(err))

    def whole(self, deltas: list[tasks.Delta], usage: tasks.Usage) -> JSONResponse:
        self.deltas = list(deltas)
        return JSONResponse(self._final("".join(d.text for d in deltas), usage))

    def _final(self, content: str, usage: tasks.Usage) -> dict[str, Any]:
        finish = next((d.finish_reason for d in reversed(self.deltas) if d.finish_reason), "stop")
        return {"content": content, "stop": True, "model": self.model, "created": int(time.time()),
                "stop_type": "limit" if finish == "length" else "eos",
                "tokens_predicted": usage.completion_tokens, "tokens_evaluated": usage.prompt_tokens,
                "tokens_cached": usage.cached_tokens or 0}


@router.post("/infill", summary="llama-server: fill in the middle")
async def infill(body: InfillRequest, request: Request) -> Any:
    registry: ModelRegistry = request.app.state.registry
    entry = pick_model(registry, body.model)
    task = tasks.CompletionTask(entry.name, body.input_prefix, body.options(), suffix=body.input_suffix,
                                context_files=body.input_extra, middle=body.prompt)
    run = await start(request, task)
    return await respond(request, run, InfillRenderer(entry.name), stream=body.stream)
