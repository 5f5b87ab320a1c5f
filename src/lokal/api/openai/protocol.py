"""Request types of the OpenAI API, one per endpoint, and their translation into tasks.

Unknown fields are accepted and ignored, as OpenAI-compatible servers do; known
fields are checked for type and range so that bad values are a 400, not an
engine failure. NaN and Infinity are refused everywhere.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lokal import tasks
from lokal.api.images import ImageLoader
from lokal.models.functions import FunctionSpecError

log = logging.getLogger(__name__)

MAX_STOPS = 16
MAX_STOP_LENGTH = 1000
MAX_N = 16

#: Tools OpenAI runs on its own servers (search, files, code, images, remote MCP).
#: lokal cannot run them; a request that offers them is served without them, with a
#: log line, as OpenAI-compatible servers do (Codex offers `web_search` by default).
HOSTED_TOOLS = frozenset({
    "web_search", "web_search_preview", "web_search_2025_08_26", "web_search_preview_2025_03_11",
    "file_search", "code_interpreter", "image_generation", "mcp",
})


def skip_hosted(kinds: list[str], where: str) -> None:
    """The one log line for hosted tools a request offered and lokal left out."""
    if kinds:
        log.info("%s: left out tools this server cannot run (hosted by OpenAI): %s", where,
                 ", ".join(sorted(set(kinds))))


def _reject_lone_surrogates(value: Any) -> None:
    """JSON may escape half a UTF-16 pair (\\ud800); no engine or tokenizer takes it.
    Walks the whole body, however deep, without recursion."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("strings may not contain lone UTF-16 surrogates (\\ud800-\\udfff)") from None
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, protected_namespaces=())

    @model_validator(mode="before")
    @classmethod
    def _valid_text(cls, data: Any) -> Any:
        _reject_lone_surrogates(data)
        return data


class StreamOptions(_Request):
    include_usage: bool = False


class JSONSchemaFormat(_Request):
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None
    # llama.cpp's shorthand: {"type": "json_object", "schema": {...}}
    schema_: dict[str, Any] | None = Field(None, alias="schema")

    @model_validator(mode="after")
    def _needs_schema(self) -> ResponseFormat:
        if self.type == "json_schema" and (self.json_schema is None or self.json_schema.schema_ is None):
            raise ValueError("response_format of type json_schema needs json_schema.schema")
        return self

    def to_task(self) -> tasks.ResponseFormat | None:
        if self.type == "text":
            return None
        if self.json_schema is not None:
            return tasks.ResponseFormat("json_schema", self.json_schema.schema_, self.json_schema.name)
        return tasks.ResponseFormat("json_object", self.schema_)


class _SamplingRequest(_Request):
    """Parameters shared by chat and text completions."""

    model: str = Field(min_length=1, max_length=256)
    # 0 would still generate a token in llama.cpp; OpenAI refuses it too.
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repeat_penalty: float | None = Field(None, ge=0)
    logit_bias: dict[str, float] | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    grammar: str | None = Field(None, max_length=1_000_000)
    # llama.cpp and vLLM: keep generating past the end-of-sequence token (benchmarks, tests).
    ignore_eos: bool | None = None
    # llama.cpp's own names for the same things (requests written for llama-server).
    n_predict: int | None = Field(None, ge=1)
    cache_prompt: bool | None = None
    n_probs: int | None = Field(None, ge=0, le=20)
    json_schema: dict[str, Any] | None = None
    # llama-server: stream the prompt's processing progress (`prompt_progress` chunks).
    return_progress: bool = False
    user: str | None = None
    # lokal: end this request after so many seconds (overrides REQUEST_TIMEOUT).
    timeout: float | None = Field(None, gt=0, le=86_400)

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences are allowed")
        if any(len(s) > MAX_STOP_LENGTH for s in stops):
            raise ValueError(f"a stop sequence may be at most {MAX_STOP_LENGTH} characters")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is None:
            return None
        if len(value) > 1024:
            raise ValueError("at most 1024 logit_bias entries are allowed")
        for token, bias in value.items():
            if not token.lstrip("-").isdigit():
                raise ValueError(f"keys must be token ids, got {token!r}")
            if not -100 <= bias <= 100:
                raise ValueError("biases must be between -100 and 100")
        return value

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def options(self, max_tokens: int | None = None) -> tasks.GenerationOptions:
        """The sampling and generation options the client set (None: not set)."""
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if self.max_tokens is not None:
            max_tokens = self.max_tokens
        elif max_tokens is None:
            max_tokens = self.n_predict
        sampling = tasks.Sampling(
            max_tokens=max_tokens,
            temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, min_p=self.min_p,
            seed=self.seed, stop=stop, presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty, repeat_penalty=self.repeat_penalty,
            logit_bias=self.logit_bias, ignore_eos=self.ignore_eos, cache_prompt=self.cache_prompt,
            n_probs=self.n_probs)
        fmt = getattr(self, "response_format", None)
        response_format = fmt.to_task() if fmt is not None else None
        if response_format is None and self.json_schema is not None:
            response_format = tasks.ResponseFormat("json_schema", self.json_schema)
        return tasks.GenerationOptions(sampling=sampling, n=self.n, response_format=response_format,
                                       grammar=self.grammar, stream=self.stream, timeout=self.timeout)


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ToolResultPart(_Request):
    """A part Dify sends with a tool's output."""

    type: Literal["tool_result"]
    tool_use_id: str | None = None
    content: str | list[TextPart] | None = None


class ImageURL(_Request):
    url: str = Field(min_length=1)
    detail: str | None = None  # OpenAI's auto/low/high: the projector decides, so it is ignored


class ImageURLPart(_Request):
    """An image: a `data:` URI (or an http(s) URL where the server allows fetching)."""

    type: Literal["image_url"]
    image_url: ImageURL | str  # some clients send the URL itself

    @property
    def url(self) -> str:
        return self.image_url if isinstance(self.image_url, str) else self.image_url.url


class UnsupportedPart(_Request):
    type: Literal["input_audio", "file"]


ContentPart = Annotated[TextPart | ToolResultPart | ImageURLPart | UnsupportedPart,
                        Field(discriminator="type")]


class FunctionCall(_Request):
    name: str
    arguments: str = ""


class ToolCall(_Request):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    function_call: FunctionCall | None = None

    def to_task(self) -> tasks.Message:
        role = {"developer": "system", "function": "tool"}.get(self.role, self.role)
        calls = [tasks.ToolCall(c.id or "", c.function.name, c.function.arguments)
                 for c in self.tool_calls or []]
        if self.function_call is not None:
            calls.append(tasks.ToolCall("", self.function_call.name, self.function_call.arguments))
        return tasks.Message(role, _text(self.content), tool_calls=calls,  # type: ignore[arg-type]
                             tool_call_id=self.tool_call_id, name=self.name)

    @model_validator(mode="after")
    def _supported_parts(self) -> ChatMessage:
        if isinstance(self.content, list):
            for part in self.content:
                if isinstance(part, UnsupportedPart):
                    raise ValueError(f"content parts of type {part.type!r} are not supported; "
                                     "send text and image_url parts")
        return self

    def image_urls(self) -> list[tuple[int, str]]:
        """(part index, URL) of each image part, in order."""
        if not isinstance(self.content, list):
            return []
        return [(i, p.url) for i, p in enumerate(self.content) if isinstance(p, ImageURLPart)]


class FunctionDef(_Request):
    name: str = Field(min_length=1, max_length=256)
    description: str | None = None
    parameters: dict[str, Any] | None = None

    def to_task(self) -> tasks.Tool:
        return tasks.Tool(self.name, self.description or "", self.parameters)


class ToolDef(_Request):
    type: Literal["function"]
    function: FunctionDef


class HostedToolDef(_Request):
    """A tool only OpenAI's servers run (see HOSTED_TOOLS): left out, with a log line."""

    type: str

    @model_validator(mode="after")
    def _hosted(self) -> HostedToolDef:
        if self.type == "function":
            raise ValueError("a function tool needs function.name")
        if self.type not in HOSTED_TOOLS:
            raise ValueError(f"tools of type {self.type!r} are not supported; send function tools")
        return self


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[ToolDef | HostedToolDef] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    # OpenAI's legacy function calling, which Dify's LocalAI provider sends.
    functions: list[FunctionDef] | None = Field(None, max_length=128)
    function_call: Literal["none", "auto"] | dict[str, Any] | None = None

    @property
    def legacy_functions(self) -> bool:
        """OpenAI's legacy `functions` (answered as function_call), not `tools`."""
        return bool(self.functions) and not self.tools

    def to_task(self) -> tasks.ChatTask:
        options = self.options(self.max_completion_tokens)
        if self.logprobs:
            options.sampling.logprobs = True
            options.sampling.top_logprobs = self.top_logprobs or 0
        if self.legacy_functions:
            tools = [f.to_task() for f in self.functions or []]
            choice = _tool_choice(self.function_call)
        elif self.tools:
            skip_hosted([t.type for t in self.tools if isinstance(t, HostedToolDef)], "chat completions")
            tools = [t.function.to_task() for t in self.tools if isinstance(t, ToolDef)]
            choice = _tool_choice(self.tool_choice)
        else:
            tools, choice = [], "auto"
        # Legacy function_call answers hold one call.
        parallel = False if self.legacy_functions else self.parallel_tool_calls
        return tasks.ChatTask(self.model, [m.to_task() for m in self.messages], options,
                              tools=tools, tool_choice=choice, parallel_tool_calls=parallel)

    async def to_task_with_images(self, loader: ImageLoader) -> tasks.ChatTask:
        """The task with every image part loaded and checked (ImageError: a 400 naming it)."""
        task = self.to_task()
        for i, (wire, message) in enumerate(zip(self.messages, task.messages, strict=True)):
            for j, url in wire.image_urls():
                where = f"messages.{i}.content.{j}"
                message.images.append(await loader.load(url, where=where, param=where))
        return task


def _tool_choice(choice: Any) -> str:
    """tool_choice / function_call as lokal's choice: auto, none, required or a name."""
    if choice is None:
        return "auto"
    if isinstance(choice, str):
        return choice
    function = choice.get("function") if "function" in choice else choice
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        raise FunctionSpecError("tool_choice / function_call must name a function")
    return name


def _text(content: str | list[Any] | None) -> str:
    """A message's content as text: a string, or its text parts joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if isinstance(part, TextPart):
            texts.append(part.text)
        elif isinstance(part, ToolResultPart):
            texts.append(_text(part.content))
    return "".join(texts)


TokenIds = list[Annotated[int, Field(ge=0, lt=1 << 31)]]


class CompletionRequest(_SamplingRequest):
    prompt: str | list[str] | TokenIds | list[TokenIds]
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = Field(None, ge=0, le=20)
    best_of: int | None = Field(None, ge=1, le=MAX_N)
    response_format: ResponseFormat | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("prompt may not be an empty list")
        if isinstance(value, list) and len(value) > 64:
            raise ValueError("at most 64 prompts are allowed in one request")
        return value

    def to_task(self) -> tasks.CompletionTask:
        return tasks.CompletionTask(self.model, self.prompt, self.options(), echo=self.echo,
                                    suffix=self.suffix, logprobs=self.logprobs)


MAX_EMBEDDING_INPUTS = 2048


class EmbeddingRequest(_Request):
    model: str = Field(min_length=1, max_length=256)
    input: str | list[str] | TokenIds | list[TokenIds]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

    def to_task(self) -> tasks.EmbedTask:
        value = self.input
        if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
            return tasks.EmbedTask(self.model, [value], token_ids=True,  # type: ignore[list-item]
                                   dimensions=self.dimensions)
        if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
            return tasks.EmbedTask(self.model, value, token_ids=True,  # type: ignore[arg-type]
                                   dimensions=self.dimensions)
        inputs = [value] if isinstance(value, str) else list(value)
        return tasks.EmbedTask(self.model, inputs, dimensions=self.dimensions)  # type: ignore[arg-type]

    @field_validator("input")
    @classmethod
    def _input(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value:
                raise ValueError("input may not be an empty string")
            return value
        if not value:
            raise ValueError("input may not be an empty list")
        if len(value) > MAX_EMBEDDING_INPUTS:
            raise ValueError(f"at most {MAX_EMBEDDING_INPUTS} inputs are allowed in one request")
        for item in value:
            if (isinstance(item, str) or isinstance(item, list)) and not item:
                raise ValueError("input items may not be empty")
        return value


MAX_RERANK_DOCUMENTS = 1000


class RerankDocument(_Request):
    text: str


class RerankRequest(_Request):
    """Jina/Cohere-style rerank (`documents`), as LocalAI and Dify send it, or Hugging Face
    TEI's (`texts`, `raw_scores`, `return_text`, `truncate`), as TEI clients send it.
    Which one a request is follows from its fields: `texts` is TEI, `documents` Jina."""

    # TEI serves one model and its clients may leave this out (see `tei`).
    model: str | None = Field(None, min_length=1, max_length=256)
    query: str = Field(min_length=1)
    documents: list[str | RerankDocument] | None = Field(None, min_length=1, max_length=MAX_RERANK_DOCUMENTS)
    top_n: int | None = Field(None, ge=1)
    # Each result's `document` only when asked for (as llama-server, Cohere): Dify's Ollama
    # provider reads it as a string, its LocalAI provider as {"text"}, and both fall back
    # to the documents they sent when it is absent.
    return_documents: bool = False
    # Hugging Face TEI
    texts: list[str] | None = Field(None, min_length=1, max_length=MAX_RERANK_DOCUMENTS)
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool | None = None

    @model_validator(mode="after")
    def _one_shape(self) -> RerankRequest:
        if self.documents is not None and self.texts is not None:
            raise ValueError("send either documents (Jina/Cohere rerank) or texts (Hugging Face TEI "
                             "rerank), not both")
        if self.documents is None and self.texts is None:
            raise ValueError("documents (or TEI's texts) is required")
        if self.texts is None and self.model is None:
            raise ValueError("model is required")
        return self

    @property
    def tei(self) -> bool:
        return self.texts is not None

    def to_task(self, model: str) -> tasks.RerankTask:
        if self.texts is not None:
            texts = list(self.texts)
        else:
            texts = [d if isinstance(d, str) else d.text for d in self.documents or []]
        return tasks.RerankTask(model, self.query, texts, self.top_n)
