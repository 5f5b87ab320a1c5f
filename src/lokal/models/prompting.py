"""From an OpenAI-style request to the body an engine runs, as the model's config says.

Config values are defaults: whatever the request sets wins, zero included
(`temperature: 0` overrides a config's 0.2). A config naming LocalAI templates
has the prompt rendered here, LocalAI's way; otherwise the GGUF's own chat
template does it inside the engine.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from lokal import templates
from lokal.errors import BadRequest
from lokal.models.config import ModelEntry
from lokal.models.functions import FunctionPlan, plan_functions, prompt_messages

log = logging.getLogger("lokal.prompt")

# Fields of an OpenAI request that are ours to handle, never the engine's.
_NOT_FOR_ENGINE = frozenset({"model", "user", "stream", "stream_options", "max_completion_tokens",
                              "messages", "prompt", "echo", "suffix", "best_of", "functions",
                              "function_call", "tools", "tool_choice", "parallel_tool_calls"})


class PromptError(BadRequest):
    """A request the model's templates cannot render (a 400 for the client)."""


@dataclass
class EngineCall:
    """What to ask the engine: a chat or a plain completion, and the body."""

    mode: Literal["chat", "completion"]
    body: dict[str, Any]
    rendered: list[str] | None = None  # prompts rendered by LocalAI templates, for debug logs
    functions: FunctionPlan | None = None  # the reply is a function call or an answer, as JSON


def content_text(content: Any) -> str:
    """The text of a message's content: a string, or the text of its parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.get("type") == "text":
            texts.append(part.get("text") or "")
        elif part.get("type") == "tool_result":
            texts.append(content_text(part.get("content")))
    return "".join(texts)


def _stops(config_stops: list[str], requested: Any) -> list[str]:
    stops: list[str] = []
    if isinstance(requested, str):
        stops.append(requested)
    elif isinstance(requested, list):
        stops.extend(requested)
    for stop in config_stops:
        if stop and stop not in stops:
            stops.append(stop)
    return stops


def _engine_body(entry: ModelEntry, request: dict[str, Any]) -> dict[str, Any]:
    """Request parameters with the config's defaults filled in."""
    config = entry.config
    body = {k: v for k, v in request.items() if k not in _NOT_FOR_ENGINE and v is not None}
    if "max_tokens" not in body and request.get("max_completion_tokens") is not None:
        body["max_tokens"] = request["max_completion_tokens"]
    if config is not None:
        for key, value in config.parameters.request_defaults().items():
            body.setdefault(key, value)
        stops = _stops(config.stopwords, request.get("stop"))
    else:
        stops = _stops([], request.get("stop"))
    if stops:
        body["stop"] = stops
    else:
        body.pop("stop", None)
    return body


def _render(template: templates.Template, data: dict[str, Any]) -> str:
    try:
        return template.render(data)
    except templates.TemplateError as exc:
        raise PromptError(f"the model's prompt template failed: {exc}") from exc


def render_chat(entry: ModelEntry, messages: list[dict[str, Any]]) -> str:
    """Messages into one prompt, as LocalAI does with `roles`, `chat_message` and `chat`."""
    config = entry.config
    assert config is not None
    roles = config.roles
    parts: list[str] = []
    suppress_system = False
    last = len(messages) - 1
    for index, message in enumerate(messages):
        role = message["role"]
        text = content_text(message.get("content"))
        if entry.templates.chat_message is not None:
            rendered = _render(entry.templates.chat_message, {
                "SystemPrompt": config.system_prompt or "",
                "Role": roles.get(role, ""),
                "RoleName": role,
                "Content": text,
                "FunctionName": message.get("name") or "",
                "LastMessage": index == last,
                "MessageIndex": index,
            })
            if rendered == "":
                continue  # LocalAI skips messages its template renders empty
            parts.append(rendered)
            continue
        prefix = roles.get(role, "")
        parts.append(f"{prefix}{text}" if text else "")  # LocalAI: the role only with content
        if text and role == "system":
            suppress_system = True
    joiner = config.template.join_chat_messages_by_character
    prompt = ("\n" if joiner is None else joiner).join(parts)
    if entry.templates.chat is not None:
        prompt = _render(entry.templates.chat, {
            "SystemPrompt": config.system_prompt or "",
            "SuppressSystemPrompt": suppress_system,
            "Input": prompt,
            "Instruction": prompt,
        })
    return prompt


def render_completion(entry: ModelEntry, prompt: str) -> str:
    config = entry.config
    if entry.templates.completion is None or config is None:
        return prompt
    return _render(entry.templates.completion, {
        "SystemPrompt": config.system_prompt or "",
        "Input": prompt,
        "Instruction": prompt,
    })


def _engine_messages(entry: ModelEntry, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages for the GGUF chat template: text content, config system prompt first."""
    out = []
    for message in messages:
        item = {k: v for k, v in message.items() if v is not None}
        content = message.get("content")
        if isinstance(content, list):
            item["content"] = content_text(content)
        elif content is None:
            item["content"] = ""
        out.append(item)
    config = entry.config
    if config is not None and config.system_prompt and not any(m["role"] == "system" for m in out):
        out.insert(0, {"role": "system", "content": config.system_prompt})
    return out


def plan_chat(entry: ModelEntry, request: dict[str, Any]) -> EngineCall:
    """The engine call for a chat request."""
    body = _engine_body(entry, request)
    functions = plan_functions(request)
    messages = prompt_messages(request["messages"], functions)
    if functions is not None:
        # The engine turns the schema into a grammar: a call or an answer, nothing else.
        body.pop("response_format", None)
        body.pop("grammar", None)
        body["json_schema"] = functions.schema
    if entry.templates.renders_chat:
        prompt = render_chat(entry, messages)
        log.debug("model %s: rendered chat prompt: %r", entry.name, prompt)
        for key in ("logprobs", "top_logprobs"):
            body.pop(key, None)
        body["prompt"] = prompt
        return EngineCall(mode="completion", body=body, rendered=[prompt], functions=functions)
    body["messages"] = _engine_messages(entry, messages)
    return EngineCall(mode="chat", body=body, functions=functions)


def plan_completion(entry: ModelEntry, request: dict[str, Any]) -> EngineCall:
    """The engine call for a text completion request (prompt: str, list, or token ids)."""
    body = _engine_body(entry, request)
    prompt = request["prompt"]
    rendered = None
    if entry.templates.completion is not None:
        if isinstance(prompt, str):
            prompt = render_completion(entry, prompt)
            rendered = [prompt]
        elif isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
            prompt = [render_completion(entry, p) for p in prompt]
            rendered = list(prompt)
        if rendered is not None:
            log.debug("model %s: rendered completion prompt: %r", entry.name, rendered)
    body["prompt"] = prompt
    return EngineCall(mode="completion", body=body, rendered=rendered)
