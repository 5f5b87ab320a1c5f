"""Request types of Ollama's API (docs/api.md, api/types.go) and their translation into tasks.

Field names and types follow Ollama's wire format. As in Ollama, unknown fields
and unknown `options` are ignored; a known option of the wrong type is a 400
naming it. `model` names may carry a tag (`name:tag`); routes resolve them
against lokal's model names (see `names.py`).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from lokal import tasks
from lokal.api.images import ImageLoader
from lokal.errors import BadRequest

MAX_STOPS = 16


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, protected_namespaces=())


# keep_alive ------------------------------------------------------------------

_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_keep_alive(value: Any) -> float | None:
    """keep_alive as seconds: a number of seconds or a Go duration ("5m", "1h30m");
    negative means forever (None), 0 means unload now."""
    if value is None:
        return 300.0
    if isinstance(value, bool):
        raise BadRequest("keep_alive must be a duration such as \"5m\" or a number of seconds", param="keep_alive")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise BadRequest("keep_alive must be finite", param="keep_alive")
        return None if value < 0 else float(value)
    if isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        try:  # a bare number of seconds, as OLLAMA_KEEP_ALIVE takes it
            number = float(text)
        except ValueError:
            pass
        else:
            if math.isfinite(number):
                return None if number < 0 else number
        total, pos = 0.0, 0
        for match in _GO_PART.finditer(body):
            if match.start() != pos:
                break
            total += float(match.group(1)) * _GO_UNITS[match.group(2)]
            pos = match.end()
        if pos == len(body) and body:
            return None if sign < 0 and total > 0 else total
        raise BadRequest(f"time: invalid duration {value!r}", param="keep_alive")
    raise BadRequest("keep_alive must be a duration such as \"5m\" or a number of seconds", param="keep_alive")


# options ---------------------------------------------------------------------

# Every option of Ollama's `Options` and `Runner`, by JSON name, with its Go kind.
_OPTION_KINDS: dict[str, str] = {
    "num_keep": "int", "seed": "int", "num_predict": "int", "top_k": "int", "top_p": "float",
    "min_p": "float", "typical_p": "float", "repeat_last_n": "int", "temperature": "float",
    "repeat_penalty": "float", "presence_penalty": "float", "frequency_penalty": "float",
    "stop": "strings", "num_ctx": "int", "num_batch": "int", "num_gpu": "int", "main_gpu": "int",
    "use_mmap": "bool", "num_thread": "int", "draft_num_predict": "int",
    # older Ollama versions still sent by some clients
    "penalize_newline": "bool", "numa": "bool", "low_vram": "bool", "f16_kv": "bool",
    "vocab_only": "bool", "use_mlock": "bool", "logits_all": "bool", "embedding_only": "bool",
    "mirostat": "int", "mirostat_tau": "float", "mirostat_eta": "float", "tfs_z": "float",
    "num_gqa": "int", "rope_frequency_base": "float", "rope_frequency_scale": "float",
}

_TYPE_NAMES = {"int": "integer", "float": "float32", "bool": "boolean", "strings": "array"}


def _option(key: str, value: Any) -> Any:
    """One option checked as Ollama's Options.FromMap does (None: not set)."""
    kind = _OPTION_KINDS[key]
    if value is None:
        return None
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind in ("int", "float"):
        if not number:
            raise BadRequest(f'option "{key}" must be of type {_TYPE_NAMES[kind]}', param=f"options.{key}")
        if not math.isfinite(value):
            raise BadRequest(f'option "{key}" must be a finite number', param=f"options.{key}")
        return int(value) if kind == "int" else float(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise BadRequest(f'option "{key}" must be of type boolean', param=f"options.{key}")
        return value
    if not isinstance(value, list):
        raise BadRequest(f'option "{key}" must be of type array', param=f"options.{key}")
    if not all(isinstance(item, str) for item in value):
        raise BadRequest(f'option "{key}" must be of an array of strings', param=f"options.{key}")
    return value


def _check_range(key: str, value: float | None, low: float | None, high: float | None) -> None:
    if value is None:
        return
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        raise BadRequest(f'option "{key}" must be {bounds}, got {value:g}', param=f"options.{key}")


def parse_options(raw: dict[str, Any] | None) -> dict[str, Any]:
    """The options lokal knows, type-checked; unknown ones are ignored as Ollama does."""
    out: dict[str, Any] = {}
    for key, value in (raw or {}).items():
        if key in _OPTION_KINDS:
            checked = _option(key, value)
            if checked is not None:
                out[key] = checked
    _check_range("temperature", out.get("temperature"), 0, None)
    _check_range("top_p", out.get("top_p"), 0, 1)
    _check_range("min_p", out.get("min_p"), 0, 1)
    _check_range("top_k", out.get("top_k"), 0, None)
    _check_range("repeat_penalty", out.get("repeat_penalty"), 0, None)
    _check_range("num_ctx", out.get("num_ctx"), 0, None)
    if len(out.get("stop", [])) > MAX_STOPS:
        raise BadRequest(f"at most {MAX_STOPS} stop sequences are allowed", param="options.stop")
    return out


def sampling_from(options: dict[str, Any]) -> tasks.Sampling:
    """Ollama's options as lokal's sampling. num_predict < 0 (-1 endless, -2 fill the
    context) means no limit but the context; seed -1 (Ollama's 'random') is no seed."""
    num_predict = options.get("num_predict")
    seed = options.get("seed")
    return tasks.Sampling(
        max_tokens=num_predict if num_predict is not None and num_predict > 0 else None,
        temperature=options.get("temperature"), top_p=options.get("top_p"),
        top_k=options.get("top_k"), min_p=options.get("min_p"),
        seed=seed if seed is not None and seed >= 0 else None,
        stop=list(options.get("stop", [])),
        presence_penalty=options.get("presence_penalty"),
        frequency_penalty=options.get("frequency_penalty"),
        repeat_penalty=options.get("repeat_penalty"))


def response_format(value: Any) -> tasks.ResponseFormat | None:
    """`format`: "json" (any JSON object) or a JSON schema; "" and null: free text."""
    if value is None or value == "" or value == "null":
        return None
    if value == "json":
        return tasks.ResponseFormat("json_object")
    if isinstance(value, dict):
        return tasks.ResponseFormat("json_schema", value)
    raise BadRequest('invalid format: expected "json" or a valid JSON schema', param="format")


# Chat ------------------------------------------------------------------------


class ToolCallFunction(_Request):
    index: int | None = None
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)

    @field_validator("arguments", mode="before")
    @classmethod
    def _arguments(cls, value: Any) -> Any:
        # Some clients echo OpenAI-style argument text back; Ollama's own are objects.
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except ValueError:
                raise ValueError("tool call arguments must be a JSON object") from None
        return {} if value is None else value


class ToolCall(_Request):
    id: str | None = None
    function: ToolCallFunction


class Message(_Request):
    role: str
    content: str | None = ""
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None

    @field_validator("role", mode="before")
    @classmethod
    def _role(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.lower()
            if value not in ("system", "user", "assistant", "tool"):
                raise ValueError("role must be system, user, assistant or tool")
        return value

    def to_task(self, position: int) -> tasks.Message:
        calls = [tasks.ToolCall(c.id or f"call_{position}_{i}", c.function.name,
                                json.dumps(c.function.arguments, ensure_ascii=False))
                 for i, c in enumerate(self.tool_calls or [])]
        return tasks.Message(self.role, self.content or "", tool_calls=calls,  # type: ignore[arg-type]
                             tool_call_id=self.tool_call_id, name=self.tool_name)


class ToolFunction(_Request):
    name: str = Field(min_length=1, max_length=256)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Request):
    type: Literal["function"] = "function"
    function: ToolFunction


class _Generation(_Request):
    """What chat and generate share."""

    model: str = Field(min_length=1, max_length=256)
    stream: bool = True
    format: Any = None
    keep_alive: Any = None
    options: dict[str, Any] | None = None
    think: bool | Literal["low", "medium", "high", "max"] | None = None
    logprobs: bool = False
    top_logprobs: int = Field(0, ge=0, le=20)
    truncate: bool | None = None
    shift: bool | None = None
    _options: dict[str, Any] = PrivateAttr(default_factory=dict)
    _format: tasks.ResponseFormat | None = PrivateAttr(None)
    _keep_alive: float | None = PrivateAttr(300.0)

    @model_validator(mode="after")
    def _checked(self) -> _Generation:
        # Checked once here, so a bad value is a 400 before any model is touched.
        self._options = parse_options(self.options)
        self._format = response_format(self.format)
        self._keep_alive = parse_keep_alive(self.keep_alive)
        return self

    @property
    def keep_alive_seconds(self) -> float | None:
        return self._keep_alive

    @property
    def num_ctx(self) -> int | None:
        return self._options.get("num_ctx")

    def generation_options(self) -> tasks.GenerationOptions:
        options = tasks.GenerationOptions(sampling=sampling_from(self._options),
                                          response_format=self._format, stream=self.stream)
        if self.logprobs:  # each token's logprob, with top_logprobs alternatives
            options.sampling.logprobs = True
            options.sampling.top_logprobs = self.top_logprobs
        return options


async def load_images(loader: ImageLoader, images: list[str] | None, where: str) -> list[tasks.ImagePart]:
    """Ollama's `images`: bare base64 (a `data:` URI is taken too, as some clients send one),
    each decoded and checked; a bad one is a 400 naming it (`where`.N)."""
    out = []
    for j, text in enumerate(images or []):
        at = f"{where}.{j}"
        if text.lstrip()[:5].lower() == "data:":
            out.append(await loader.load(text, where=at, param=at))
        else:
            out.append(loader.decode(text, where=at, param=at))
    return out


class ChatRequest(_Generation):
    messages: list[Message] = Field(default_factory=list)
    tools: list[Tool] | None = Field(None, max_length=128)

    def to_task(self, model: str) -> tasks.ChatTask:
        tools = [tasks.Tool(t.function.name, t.function.description or "", t.function.parameters)
                 for t in self.tools or []]
        return tasks.ChatTask(model, [m.to_task(i) for i, m in enumerate(self.messages)],
                              self.generation_options(), tools=tools)

    async def to_task_with_images(self, model: str, loader: ImageLoader) -> tasks.ChatTask:
        """The task with every message's images decoded and checked."""
        task = self.to_task(model)
        for i, (wire, message) in enumerate(zip(self.messages, task.messages, strict=True)):
            message.images = await load_images(loader, wire.images, f"messages.{i}.images")
        return task


class GenerateRequest(_Generation):
    prompt: str = ""
    suffix: str = ""
    system: str = ""
    template: str = ""
    context: list[int] | None = None
    raw: bool = False
    images: list[str] | None = None

    def to_task(self, model: str) -> tasks.ChatTask | tasks.CompletionTask:
        """raw: the prompt as it is (a text completion, no template); else a chat turn
        through the model's template, with `system` when given. With a `suffix`: fill in
        the middle between prompt and suffix (the model's own FIM format)."""
        options = self.generation_options()
        if self.suffix:
            if self.images:
                raise BadRequest("images cannot go with suffix (fill in the middle)", param="images")
            return tasks.CompletionTask(model, self.prompt, options, suffix=self.suffix)
        if self.raw:
            if self.images:
                raise BadRequest("images need the model's chat template: send them without raw "
                                 "(raw prompts have no place for images)", param="images")
            return tasks.CompletionTask(model, self.prompt, options,
                                        logprobs=self.top_logprobs if self.logprobs else None)
        messages = []
        if self.system:
            messages.append(tasks.Message("system", self.system))
        messages.append(tasks.Message("user", self.prompt))
        return tasks.ChatTask(model, messages, options)

    async def to_task_with_images(self, model: str,
                                  loader: ImageLoader) -> tasks.ChatTask | tasks.CompletionTask:
        """The task with `images` decoded and checked, on the user's turn."""
        task = self.to_task(model)
        if self.images and isinstance(task, tasks.ChatTask):
            task.messages[-1].images = await load_images(loader, self.images, "images")
        return task


# Embeddings ------------------------------------------------------------------

MAX_EMBED_INPUTS = 2048


class EmbedRequest(_Request):
    model: str = Field(min_length=1, max_length=256)
    input: str | list[str] = Field(default_factory=list)
    truncate: bool | None = None  # Ollama's default is true, as lokal's model configs
    dimensions: int | None = Field(None, ge=0)
    keep_alive: Any = None
    options: dict[str, Any] | None = None
    _keep_alive: float | None = PrivateAttr(300.0)

    @model_validator(mode="after")
    def _checked(self) -> EmbedRequest:
        parse_options(self.options)
        self._keep_alive = parse_keep_alive(self.keep_alive)
        if isinstance(self.input, list):
            if len(self.input) > MAX_EMBED_INPUTS:
                raise ValueError(f"at most {MAX_EMBED_INPUTS} inputs are allowed in one request")
            if any(not item for item in self.input):
                raise ValueError("input items may not be empty")
        return self

    @property
    def keep_alive_seconds(self) -> float | None:
        return self._keep_alive

    @property
    def inputs(self) -> list[str]:
        if isinstance(self.input, str):
            return [self.input] if self.input else []
        return list(self.input)

    def to_task(self, model: str) -> tasks.EmbedTask:
        return tasks.EmbedTask(model, self.inputs, dimensions=self.dimensions or None,
                               truncate=self.truncate)


class EmbeddingsRequest(_Request):
    """The legacy /api/embeddings: one prompt, one vector."""

    model: str = Field(min_length=1, max_length=256)
    prompt: str = ""
    keep_alive: Any = None
    options: dict[str, Any] | None = None
    _keep_alive: float | None = PrivateAttr(300.0)

    @model_validator(mode="after")
    def _checked(self) -> EmbeddingsRequest:
        parse_options(self.options)
        self._keep_alive = parse_keep_alive(self.keep_alive)
        return self

    @property
    def keep_alive_seconds(self) -> float | None:
        return self._keep_alive


# Model management ------------------------------------------------------------


class _Named(_Request):
    """`model`, or the older `name` that some clients still send."""

    model: str = ""
    name: str = ""

    @model_validator(mode="after")
    def _one_name(self) -> _Named:
        if not (self.model or self.name):
            raise ValueError("model is required")
        return self

    @property
    def target(self) -> str:
        return self.model or self.name


class ShowRequest(_Named):
    verbose: bool = False


class DeleteRequest(_Named):
    pass


class PullRequest(_Named):
    insecure: bool = False
    stream: bool = True


class CopyRequest(_Request):
    source: str = Field(min_length=1, max_length=256)
    destination: str = Field(min_length=1, max_length=256)
