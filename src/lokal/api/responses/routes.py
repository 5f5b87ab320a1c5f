"""The Responses API routes: create a response (whole or streamed) and count input tokens.

Stateless: nothing is stored, so a response cannot be fetched, deleted or
continued by id (those answer 404 / 400 with the reason).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from lokal.api.counting import count_prompt_tokens
from lokal.api.generation import start
from lokal.api.images import loader_for
from lokal.api.respond import respond
from lokal.api.responses.protocol import ResponsesRequest
from lokal.api.responses.render import ResponseRenderer
from lokal.errors import NotFound

router = APIRouter()


def _echo(body: ResponsesRequest) -> dict[str, Any]:
    """What a response repeats of its request."""
    fmt = body.text.format if body.text is not None and body.text.format is not None else None
    tools = [t.model_dump(by_alias=True, exclude_none=True) for t in body.tools or []]
    return {
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "metadata": body.metadata or {},
        "parallel_tool_calls": body.parallel_tool_calls if body.parallel_tool_calls is not None else True,
        "reasoning": {"effort": None, "summary": None},
        "temperature": body.temperature,
        "text": {"format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}},
        "tool_choice": body.tool_choice if body.tool_choice is not None else "auto",
        "tools": tools,
        "top_p": body.top_p,
        "truncation": "disabled",
        "user": body.user,
    }


@router.post("/responses", summary="Create a model response (OpenAI Responses API)")
async def create_response(body: ResponsesRequest, request: Request) -> Any:
    task = await body.to_task_with_images(loader_for(request))
    run = await start(request, task)
    renderer = ResponseRenderer(body.model, _echo(body), body.namespaced())
    return await respond(request, run, renderer, stream=body.stream)


@router.post("/responses/input_tokens", summary="Count a Responses request's input tokens")
async def input_tokens(body: ResponsesRequest, request: Request) -> dict[str, Any]:
    count, _exact = await count_prompt_tokens(request, await body.to_task_with_images(loader_for(request)))
    return {"object": "response.input_tokens", "input_tokens": count}


@router.api_route("/responses/{response_id}", methods=["GET", "DELETE"], include_in_schema=False)
async def stored_response(response_id: str) -> None:
    raise NotFound(f"No response with id '{response_id}': this server keeps no responses "
                   "(it is stateless).", param="response_id")
