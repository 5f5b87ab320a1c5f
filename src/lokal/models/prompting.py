"""From a task to the body an engine runs, as the model's config says: the one place.

Config values are defaults: whatever the request sets wins, zero included
(`temperature: 0` overrides a config's 0.2), and the config's stopwords join the
request's. A config naming LocalAI templates has the prompt rendered here,
LocalAI's way; otherwise the GGUF's own chat template does it inside the engine.
With tools, a model whose chat template knows tools gets them in its own format
(the template renders them, the engine parses the model's calls: `native`);
any other is held by a grammar to lokal's JSON envelope (see `functions`).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from lokal import templates
from lokal.errors import BadRequest
from lokal.models.catalog import ModelEntry
from lokal.models import localai_config
from lokal.models.localai_functions import planning as localai_planning
from lokal.models.localai_functions import replies as localai_replies
from lokal.models.functions import FunctionPlan, FunctionSpecError, plan_functions, prompt_messages
from lokal.models.planner import EngineDefaults
from lokal.tasks import ChatTask, CompletionTask, GenerationOptions, ImagePart, Message, Tool

log = logging.getLogger(__name__)


class PromptError(BadRequest):
    """A request the model's templates cannot render."""


class ImagesNotSupported(BadRequest):
    """Images sent to a model that cannot take them (never dropped silently)."""


@dataclass
class EngineCall:
    """What to ask the engine: a chat or a plain completion, and the body."""

    mode: Literal["chat", "completion", "infill"]
    body: dict[str, Any]
    functions: FunctionPlan | None = None  # the reply is lokal's JSON envelope: a call or an answer
    n: int = 1  # choices per prompt
    #: native tool calls: several calls in one turn, or only the first (the engine lets a
    #: model's own format make more even with `parallel_tool_calls: false`)
    parallel_calls: bool = True
    streamed: bool = True  # the client reads the answer as it is made
    #: the request's stop sequences, which lokal matches itself (not the engine) so that
    #: an answer can say which one ended it; empty when the engine matches them (several
    #: choices at once, where one match must not stop the others)
    stops: list[str] = field(default_factory=list)
    #: LocalAI's reply handling (its function block, cutstrings & co.), when the config has it
    reply: localai_replies.ReplyShaping | None = None


_SAMPLING = ("max_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "presence_penalty",
             "frequency_penalty", "repeat_penalty", "logit_bias", "ignore_eos", "cache_prompt", "n_probs")


def _stops(config_stops: list[str], requested: list[str]) -> list[str]:
    stops = list(requested)
    for stop in config_stops:
        if stop and stop not in stops:
            stops.append(stop)
    return stops


def _scanned(options: GenerationOptions) -> list[str]:
    """The stop sequences lokal matches itself for a request (see `EngineCall.stops`)."""
    return [s for s in options.sampling.stop if s] if options.n == 1 else []


def _engine_body(entry: ModelEntry, options: GenerationOptions, defaults: EngineDefaults | None = None,
                 *, scan_stops: bool = False) -> dict[str, Any]:
    """The generation options as an engine body, the config's defaults filled in.

    With scan_stops, the request's stop sequences are left out of the body (the
    generation matches them); the config's stopwords, part of the model's format,
    always go to the engine. The engine reports its prompt progress (`return_progress`),
    which tells the prompt's size before a token is made and keeps the stream alive
    through a long prefill.

    The token limit is the request's, else the config's, else the server-wide cap
    (`MAX_TOKENS_DEFAULT`), so that a request without one cannot run on to the end
    of the context; with none of them the engine stops at end-of-sequence or at
    the end of the context."""
    sampling = options.sampling
    body: dict[str, Any] = {}
    for name in _SAMPLING:
        value = getattr(sampling, name)
        if value is not None:
            body[name] = value
    config = entry.config
    if config is not None:
        for key, value in config.parameters.request_defaults().items():
            body.setdefault(key, value)
        for key, value in localai_config.sampling_defaults(config.engine).items():
            body.setdefault(key, value)
    if "max_tokens" not in body and defaults is not None and defaults.max_tokens:
        body["max_tokens"] = defaults.max_tokens
    stops = _stops(config.stopwords if config is not None else [], [] if scan_stops else sampling.stop)
    body["return_progress"] = True
    if stops:
        body["stop"] = stops
    if options.n != 1:
        body["n"] = options.n
    if options.grammar is not None:
        body["grammar"] = options.grammar
    fmt = options.response_format
    if fmt is not None:
        if fmt.schema is not None:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": fmt.name or "schema", "schema": fmt.schema}}
        else:
            body["response_format"] = {"type": "json_object"}
    return body


def _completion_format(body: dict[str, Any]) -> None:
    """llama.cpp's completions ignore `response_format` (only its chat reads it) and take
    a top-level `json_schema` instead: the same constraint, in the words it reads."""
    fmt = body.pop("response_format", None)
    if fmt is not None and "json_schema" not in body:
        schema = (fmt.get("json_schema") or {}).get("schema")
        body["json_schema"] = schema if schema is not None else {"type": "object"}


def _render(template: templates.Template, data: dict[str, Any]) -> str:
    try:
        return template.render(data)
    except templates.TemplateError as exc:
        raise PromptError(f"the model's prompt template failed: {exc}") from exc


def render_chat(entry: ModelEntry, messages: list[Message],
                functions: localai_planning.LocalAIPlan | None = None) -> str:
    """Messages into one prompt, as LocalAI does with `roles`, `chat_message` and `chat`
    (with LocalAI's function plan: past calls as `.FunctionCall`, and `template.function`
    with `.Functions` in place of `template.chat`)."""
    config = entry.config
    assert config is not None
    roles = config.roles
    parts: list[str] = []
    suppress_system = False
    last = len(messages) - 1
    for index, message in enumerate(messages):
        role = message.role
        text = message.text
        extra = localai_planning.message_data(message) if functions is not None else {}
        if extra and role == "assistant" and roles.get("assistant_function_call"):
            role = "assistant_function_call"
        if entry.templates.chat_message is not None:
            rendered = _render(entry.templates.chat_message, {
                "SystemPrompt": config.system_prompt or "",
                "Role": roles.get(role, ""),
                "RoleName": role,
                "Content": text,
                "FunctionName": message.name or "",
                "LastMessage": index == last,
                "MessageIndex": index,
                "FunctionCall": extra.get("FunctionCall"),
                "Function": functions is not None and functions.grammar is not None and index == last,
            })
            if rendered == "":
                continue  # LocalAI skips messages its template renders empty
            parts.append(rendered)
            continue
        prefix = roles.get(role, "")
        part = f"{prefix}{text}" if text else ""  # LocalAI: the role only with content
        if extra:  # a past call without a message template: its JSON after the text
            calls = json.dumps(extra["FunctionCall"], ensure_ascii=False, separators=(",", ":"))
            calls = f"{prefix} {calls}" if prefix else calls
            part = f"{part}\n{calls}" if text else calls
        parts.append(part)
        if text and role == "system":
            suppress_system = True
    joiner = config.template.join_chat_messages_by_character
    prompt = ("\n" if joiner is None else joiner).join(parts)
    template = entry.templates.chat
    if functions is not None and functions.functions and entry.templates.function is not None:
        template = entry.templates.function
    if template is not None:
        prompt = _render(template, {
            "SystemPrompt": config.system_prompt or "",
            "SuppressSystemPrompt": suppress_system,
            "Input": prompt,
            "Instruction": prompt,
            "Functions": functions.functions if functions is not None else [],
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


def data_uri(image: ImagePart) -> str:
    """An image as the `data:` URI the engine takes."""
    return f"data:{image.media_type};base64,{base64.b64encode(image.data).decode('ascii')}"


def _content(message: Message) -> str | list[dict[str, Any]]:
    """A message's engine content: its text, or its images then its text as OpenAI parts
    (the engine puts each image's tokens where its part is)."""
    if not message.images:
        return message.text
    parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": data_uri(image)}}
                                   for image in message.images]
    if message.text:
        parts.append({"type": "text", "text": message.text})
    return parts


def check_images(entry: ModelEntry, messages: list[Message]) -> int:
    """How many images the messages carry; ImagesNotSupported when the model cannot take them."""
    count = sum(len(m.images) for m in messages)
    if not count:
        return 0
    if not entry.vision:
        raise ImagesNotSupported(
            f"The model '{entry.name}' does not take images: it has no multimodal projector. "
            "Send text only, or use a vision model (a GGUF with its mmproj file; see "
            "/v1/models for models whose capabilities include 'vision').", param="messages")
    if entry.templates.renders_chat:
        raise ImagesNotSupported(
            f"The model '{entry.name}' renders its prompts with LocalAI templates (template.chat / "
            "template.chat_message), which have no place for images. Set "
            "`template.use_tokenizer_template: true` in its config to use the GGUF's own chat "
            "template, which does.", param="messages")
    return count


def _native_message(message: Message) -> dict[str, Any]:
    """A message in OpenAI's shape, past tool calls and results kept as such, for a
    chat template that renders them in the model's own format."""
    out: dict[str, Any] = {"role": message.role, "content": _content(message)}
    if message.tool_calls:
        out["tool_calls"] = [{"id": call.id, "type": "function",
                              "function": {"name": call.name, "arguments": call.arguments or "{}"}}
                             for call in message.tool_calls]
    if message.role == "tool":
        if message.tool_call_id is not None:
            out["tool_call_id"] = message.tool_call_id
        if message.name:
            out["name"] = message.name
    return out


def _engine_messages(entry: ModelEntry, messages: list[Message], *,
                     native: bool = False) -> list[dict[str, Any]]:
    """Messages for the GGUF chat template, config system prompt first."""
    out: list[dict[str, Any]] = [_native_message(m) if native else {"role": m.role, "content": _content(m)}
                                 for m in messages]
    config = entry.config
    if config is not None and config.system_prompt and not any(m.role == "system" for m in messages):
        out.insert(0, {"role": "system", "content": config.system_prompt})
    return out


def _tool(tool: Tool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "description": tool.description,
                                "parameters": tool.parameters or {"type": "object", "properties": {}}}
    return {"type": "function", "function": function}


def _check_arguments(messages: list[Message]) -> None:
    """Past calls' arguments must be JSON objects: the engine hands them to the template
    as objects (most templates write them with `tojson`)."""
    for i, message in enumerate(messages):
        for call in message.tool_calls:
            try:
                value = json.loads(call.arguments or "{}")
            except ValueError:
                value = None
            if not isinstance(value, dict):
                raise BadRequest(f"messages.{i}: the arguments of the call of {call.name!r} are not a "
                                 "JSON object", param=f"messages.{i}.tool_calls")


def _plan_native(entry: ModelEntry, task: ChatTask, body: dict[str, Any]) -> EngineCall:
    """Tools in the model's own format: the template renders them (and past calls and
    results), the engine parses the model's calls into `tool_calls` as it generates."""
    tools, choice = task.tools, task.tool_choice
    if tools and choice not in ("auto", "none", "required"):
        tools = [t for t in tools if t.name == choice]
        if not tools:
            raise FunctionSpecError(f"tool_choice names {choice!r}, which is not among the functions given")
        choice = "required"  # the one function offered, which must be called
    if tools:
        body["tools"] = [_tool(t) for t in tools]
        body["tool_choice"] = choice
        # OpenAI's default is yes; llama.cpp's is no.
        body["parallel_tool_calls"] = task.parallel_tool_calls is not False
    _check_arguments(task.messages)
    body["messages"] = _engine_messages(entry, task.messages, native=True)
    return EngineCall("chat", body, n=task.options.n, parallel_calls=task.parallel_tool_calls is not False,
                      streamed=task.options.stream, stops=_scanned(task.options))


def with_preset(entry: ModelEntry, messages: list[Message]) -> list[Message]:
    """The config's preset conversation (`messages:`) before the request's own, after the
    request's leading system messages (a template wants the system prompt first)."""
    config = entry.config
    if config is None or not config.messages:
        return messages
    lead = 0
    while lead < len(messages) and messages[lead].role == "system":
        lead += 1
    preset = [Message(m.role, m.content) for m in config.messages]
    return [*messages[:lead], *preset, *messages[lead:]]


def plan_chat(entry: ModelEntry, task: ChatTask, defaults: EngineDefaults | None = None) -> EngineCall:
    """The engine call for a chat task (defaults: the server's, for the token cap)."""
    if entry.config.messages:
        task = dataclasses.replace(task, messages=with_preset(entry, task.messages))
    body = _engine_body(entry, task.options, defaults, scan_stops=task.options.n == 1)
    sampling = task.options.sampling
    if sampling.logprobs:
        body["logprobs"] = True
        if sampling.top_logprobs:
            body["top_logprobs"] = sampling.top_logprobs
    check_images(entry, task.messages)
    # A call that must happen (tool_choice required, or a named function) goes through
    # lokal's grammar even for native-format models: the engine does not enforce it there.
    enforced = bool(task.tools) and task.tool_choice not in ("auto", "none")
    shaping = localai_replies.shaping(entry, task)  # LocalAI's function block, cutstrings & co., or None
    if entry.tool_format == "native" and not enforced and (
            task.tools or any(m.tool_calls or m.role == "tool" for m in task.messages)):
        call = _plan_native(entry, task, body)
        call.reply = shaping
        return call
    if shaping is not None and shaping.plan is not None and not shaping.plan.native:
        return _plan_localai(entry, task, body, shaping)
    functions = plan_functions(task)
    messages = prompt_messages(task.messages, functions)
    if functions is not None:
        # The engine turns the schema into a grammar: a call or an answer, nothing else.
        body.pop("response_format", None)
        body.pop("grammar", None)
        body["json_schema"] = functions.schema
    if entry.templates.renders_chat:
        prompt = render_chat(entry, messages)
        log.debug("model %s: rendered chat prompt: %r", entry.name, prompt)
        body.pop("logprobs", None)
        body.pop("top_logprobs", None)
        body["prompt"] = prompt
        _completion_format(body)
        return EngineCall("completion", body, functions=functions, n=task.options.n,
                          streamed=task.options.stream, stops=_scanned(task.options), reply=shaping)
    body["messages"] = _engine_messages(entry, messages)
    return EngineCall("chat", body, functions=functions, n=task.options.n, streamed=task.options.stream,
                      stops=_scanned(task.options), reply=shaping)


def _plan_localai(entry: ModelEntry, task: ChatTask, body: dict[str, Any],
                  shaping: localai_replies.ReplyShaping) -> EngineCall:
    """Tools as the model's LocalAI config sets them up (see `localai_functions`): its
    templates render the functions and past calls, its grammar (if any) holds the reply,
    and the whole reply is parsed with its rules."""
    plan = shaping.plan
    assert plan is not None
    if plan.grammar is not None:
        body.pop("response_format", None)
        body.pop("json_schema", None)
        body["grammar"] = plan.grammar
        if plan.lazy_triggers:
            body["grammar_lazy"] = True
            body["grammar_triggers"] = plan.lazy_triggers
    prompt = render_chat(entry, task.messages, plan)
    log.debug("model %s: rendered chat prompt with functions: %r", entry.name, prompt)
    body.pop("logprobs", None)
    body.pop("top_logprobs", None)
    body["prompt"] = prompt
    _completion_format(body)
    return EngineCall("completion", body, n=task.options.n, streamed=task.options.stream,
                      reply=shaping, parallel_calls=plan.parallel,
                      stops=_scanned(task.options))


def _plan_infill(task: CompletionTask, body: dict[str, Any]) -> EngineCall:
    if not isinstance(task.prompt, str):
        raise BadRequest("suffix (fill in the middle) takes one prompt, as text.", param="prompt")
    if task.echo or task.logprobs is not None or task.options.n != 1:
        raise BadRequest("suffix (fill in the middle) takes no echo, logprobs or n.", param="suffix")
    body.pop("n", None)
    body.update(input_prefix=task.prompt, input_suffix=task.suffix)
    if task.context_files:
        body["input_extra"] = task.context_files
    if task.middle:
        body["prompt"] = task.middle
    _completion_format(body)
    return EngineCall("infill", body, streamed=task.options.stream, stops=_scanned(task.options))


def plan_completion(entry: ModelEntry, task: CompletionTask,
                    defaults: EngineDefaults | None = None) -> EngineCall:
    """The engine call for a text completion (prompt: str, list, or token ids); with a
    suffix, a fill-in-the-middle call (the engine's FIM format, no template)."""
    single = isinstance(task.prompt, str) or (bool(task.prompt) and isinstance(task.prompt[0], int))
    scan = task.options.n == 1 and single
    body = _engine_body(entry, task.options, defaults, scan_stops=scan)
    if task.suffix is not None:
        return _plan_infill(task, body)
    prompt = task.prompt
    if task.echo:
        if not isinstance(prompt, str) and not all(isinstance(p, str) for p in prompt):
            raise BadRequest("echo needs the prompt as text, and this engine cannot turn token ids "
                             "back into text: send the prompt as a string, or leave echo out.",
                             param="echo")
        if task.logprobs is not None or task.options.sampling.n_probs:
            raise BadRequest("echo with logprobs asks for the logprobs of the prompt's tokens, which "
                             "the llama.cpp engine does not compute (only those of generated "
                             "tokens): leave out echo or logprobs.", param="logprobs")
    if task.logprobs is not None:
        # The legacy logprobs: N alternatives per token; the engine gives the sampled
        # token's logprob only along with at least one alternative.
        body["n_probs"] = max(1, task.logprobs)
    rendered = None
    if entry.templates.completion is not None:
        if isinstance(prompt, str):
            prompt = render_completion(entry, prompt)
            rendered = [prompt]
        elif isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
            prompt = [render_completion(entry, p) for p in prompt]  # type: ignore[arg-type]
            rendered = list(prompt)
        if rendered is not None:
            log.debug("model %s: rendered completion prompt: %r", entry.name, rendered)
    body["prompt"] = prompt
    _completion_format(body)
    return EngineCall("completion", body, n=task.options.n, streamed=task.options.stream,
                      stops=_scanned(task.options) if scan else [], reply=localai_replies.shaping(entry, None))
