"""The model config's schema: LocalAI's YAML fields (one config per model) as lokal reads
them, validated. Reading a models folder into entries is the catalog's
(`lokal.models.catalog`); this module only says what a config may hold.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lokal.errors import BadRequest
from lokal.models import download, localai_config, speech
from lokal.models.image_config import DiffusersOptions
from lokal.models.localai_functions.config import FunctionConfig

log = logging.getLogger(__name__)

# LocalAI backend names that lokal serves, and the engine each one maps to.
BACKEND_ALIASES = {
    "llama": "llama-cpp",
    "llama-cpp": "llama-cpp",
    "llama.cpp": "llama-cpp",
    "llamacpp": "llama-cpp",
    "llama-stable": "llama-cpp",
    # LocalAI's BERT backend: served from a GGUF or a Hugging Face folder alike.
    "bert-embeddings": "auto",
    "sentencetransformers": "sentence-transformers",
    "sentence-transformers": "sentence-transformers",
    "transformers": "sentence-transformers",
    "rerankers": "sentence-transformers",
    "whisper": "whisper",
    "faster-whisper": "whisper",
    # Speech (lokal.models.speech): text to speech and voice activity detection.
    "piper": "piper",
    "kokoro": "kokoro",
    "silero-vad": "silero-vad",
    # Image generation (lokal.models.image_config).
    "diffusers": "diffusers",
    "stablediffusion-ggml": "stablediffusion-ggml",
}
_NAME = re.compile(r"^[^/\\\x00-\x1f\x7f]{1,256}$")
#: KV cache element types llama.cpp takes (`--cache-type-k/-v`).
CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")


class ConfigError(ValueError):
    """A config that cannot be used, with a reason for the user."""


class Parameters(BaseModel):
    """`parameters:` of a LocalAI config: the model file and request defaults."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=-1)  # -1: off (llama.cpp's word for it)
    min_p: float | None = Field(None, ge=0, le=1)
    max_tokens: int | None = Field(None, ge=0)
    seed: int | None = None
    repeat_penalty: float | None = Field(None, ge=0)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    # LocalAI: prompt tokens the engine takes per step (llama.cpp's n_batch); a load option,
    # not a request default.
    batch: int | None = Field(None, ge=1, le=1 << 20)

    def request_defaults(self) -> dict[str, Any]:
        """Sampling defaults to apply when a request leaves them out."""
        names = ("temperature", "top_p", "top_k", "min_p", "max_tokens", "seed",
                 "repeat_penalty", "presence_penalty", "frequency_penalty")
        # LocalAI treats max_tokens 0 as "no limit"; so do we (the engine's default).
        return {n: getattr(self, n) for n in names
                if getattr(self, n) is not None and not (n == "max_tokens" and self.max_tokens == 0)}


class DownloadFile(BaseModel):
    """One entry of LocalAI's `download_files`."""

    model_config = ConfigDict(extra="allow")

    filename: str = Field(min_length=1)
    uri: str = Field(min_length=1)
    sha256: str | None = None

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        download.resolve_url(value)  # refuses file://, bare paths and other schemes
        return value

    @field_validator("sha256", mode="before")
    @classmethod
    def _sha(cls, value: Any) -> str | None:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value).zfill(64)  # an unquoted all-digit hash: YAML read a number
        if value is not None and not isinstance(value, str):
            raise ValueError("sha256 must be 64 hexadecimal digits")
        return download.check_sha256(value)


class TemplateConfig(BaseModel):
    """`template:` of a LocalAI config: names of `.tmpl` files or inline templates."""

    model_config = ConfigDict(extra="allow")

    chat: str | None = None
    chat_message: str | None = None
    completion: str | None = None
    function: str | None = None  # LocalAI: the prompt when a request has tools
    use_tokenizer_template: bool = False
    join_chat_messages_by_character: str | None = None


class SpeculativeConfig(BaseModel):
    """`speculative:` in a config: the mode and its parameters (unset: the engine's)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["draft", "ngram_simple", "ngram_map_k", "ngram_map_k4v", "ngram_mod", "ngram_cache"]
    n_max: int | None = Field(None, ge=1, le=64)  # most tokens drafted per step (draft, ngram_mod)
    n_min: int | None = Field(None, ge=0, le=64)
    p_min: float | None = Field(None, ge=0, le=1)  # draft: least probability to keep drafting
    size_n: int | None = Field(None, ge=1, le=64)  # ngram_simple / map_k / map_k4v: n-gram lookup size
    size_m: int | None = Field(None, ge=1, le=256)  # ... and draft length
    min_hits: int | None = Field(None, ge=1, le=64)
    n_match: int | None = Field(None, ge=1, le=64)  # ngram_mod

    def engine_values(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class PresetMessage(BaseModel):
    """A message put before every chat's own (Ollama's Modelfile MESSAGE, its create `messages`)."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str


class ModelConfig(BaseModel):
    """One model as a LocalAI YAML file describes it. Unknown fields are kept."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    name: str
    backend: str | None = None
    parameters: Parameters = Field(default_factory=Parameters)
    context_size: int | None = Field(None, ge=16)
    threads: int | None = Field(None, ge=1)
    f16: bool | None = None
    mmap: bool | None = None
    gpu_layers: int | None = None
    stopwords: list[str] = Field(default_factory=list)
    roles: dict[str, str] = Field(default_factory=dict)
    system_prompt: str | None = None
    # lokal: a conversation every chat starts with (after its own system messages)
    messages: list[PresetMessage] = Field(default_factory=list)
    template: TemplateConfig = Field(default_factory=TemplateConfig)
    known_usecases: list[str] | None = None
    # LocalAI: files fetched into the models folder when the model is first used.
    download_files: list[DownloadFile] = Field(default_factory=list)
    embeddings: bool = False
    # LocalAI: the multimodal projector (llama.cpp's mmproj GGUF) that lets the model see images.
    mmproj: str | None = None
    # Embeddings: cut inputs longer than the model's window (false: refuse them with a 400).
    truncate: bool = True
    # Embeddings: token-id inputs are OpenAI cl100k_base ids (what OpenAI clients and
    # LangChain send) unless this says they are the model's own.
    token_ids: Literal["openai", "model"] = "openai"
    # Speculative decoding (off unless set): LocalAI's draft_model / n_draft, or any of the
    # engine's modes in `speculative` (the n-gram ones need no draft model).
    draft_model: str | None = None
    n_draft: int | None = Field(None, ge=1, le=64)
    speculative: SpeculativeConfig | None = None
    # Tool calls: the model's own format through its chat template (native), lokal's JSON
    # envelope held by a grammar (grammar), or native when the template knows tools (auto).
    function_calling: Literal["auto", "native", "grammar"] = "auto"
    # LocalAI's fields beyond these (models.localai_config, models.localai_functions): its
    # function-calling block, llama.cpp options (`name:value`), a GGUF reranker flag, and
    # the last touches to a reply.
    function: FunctionConfig | None = None
    options: list[str] = Field(default_factory=list)
    reranking: bool = False
    cutstrings: list[str] = Field(default_factory=list)
    extract_regex: list[str] = Field(default_factory=list)
    trimspace: list[str] = Field(default_factory=list)
    trimsuffix: list[str] = Field(default_factory=list)

    @field_validator("options", "cutstrings", "extract_regex", "trimspace", "trimsuffix", mode="before")
    @classmethod
    def _string_list(cls, value: Any) -> Any:
        if value is None:
            return []
        items = value if isinstance(value, list) else [value]
        return [str(v) if isinstance(v, (int, float, bool)) else v for v in items]

    @model_validator(mode="after")
    def _localai_values(self) -> ModelConfig:
        options = localai_config.parse_options(self.options)
        try:
            localai_config.speculation(options, self.draft_model, self.n_draft)
            localai_config.engine_params(options)
            localai_config.finetune(self)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        return self

    @property
    def option_values(self) -> dict[str, str]:
        return localai_config.parse_options(self.options)

    # Image generation, as LocalAI's diffusers backend reads them (lokal.models.image_config).
    diffusers: DiffusersOptions | None = None
    step: int | None = Field(None, ge=1, le=1000)
    cfg_scale: float | None = Field(None, ge=0, le=100)

    # LocalAI's llama.cpp fields: the KV cache's element types and flash attention.
    cache_type_k: str | None = None
    cache_type_v: str | None = None
    flash_attention: Literal["auto", "on", "off"] | None = None
    # Sentence-transformers folders: where the model runs (unset: ONNX Runtime when the folder
    # carries an ONNX export, else torch), and `quantization: int8` for an int8 ONNX export.
    embeddings_backend: Literal["torch", "onnx", "openvino"] | None = None
    quantization: str | None = None

    @field_validator("cache_type_k", "cache_type_v", mode="before")
    @classmethod
    def _cache_type(cls, value: Any) -> Any:
        if value is None or value == "":
            return None
        name = str(value).strip().lower()
        if name not in CACHE_TYPES:
            raise ValueError(f"{value!r} is not a KV cache type llama.cpp knows "
                             f"({', '.join(CACHE_TYPES)})")
        return name

    @field_validator("flash_attention", mode="before")
    @classmethod
    def _flash_attention(cls, value: Any) -> Any:
        # LocalAI took a boolean once and takes auto/on/off now; llama.cpp's flag also says enabled/disabled.
        if value is None or value == "":
            return None
        if isinstance(value, bool):
            return "on" if value else "off"
        name = str(value).strip().lower()
        return {"true": "on", "enabled": "on", "yes": "on", "1": "on",
                "false": "off", "disabled": "off", "no": "off", "0": "off"}.get(name, name)

    @field_validator("embeddings_backend", mode="before")
    @classmethod
    def _embeddings_backend(cls, value: Any) -> Any:
        if isinstance(value, str):
            name = value.strip().lower()
            return {"onnxruntime": "onnx", "ort": "onnx", "pytorch": "torch"}.get(name, name)
        return value

    @field_validator("quantization", mode="before")
    @classmethod
    def _quantization(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @property
    def speculation(self) -> dict[str, Any] | None:
        """The speculative decoding the config asks for, as engine values, or None."""
        if self.speculative is not None:
            values = self.speculative.engine_values()
        elif "spec_type" in self.option_values or "speculative_type" in self.option_values:
            spec = localai_config.speculation(self.option_values, self.draft_model, self.n_draft)
            if spec is None:
                return None
            values = spec
        elif self.draft_model:
            values = {"type": "draft"}
        else:
            return None
        if values["type"] == "draft" and self.n_draft is not None:
            values.setdefault("n_max", self.n_draft)
        return values

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        value = value.strip()
        if not _NAME.match(value) or value in (".", "..") or ".." in value.split("/"):
            raise ValueError("a model name must be 1-256 characters without '/', '\\' or control characters")
        return value

    @field_validator("stopwords", mode="before")
    @classmethod
    def _stopwords(cls, value: Any) -> Any:
        if value is None:
            return []
        return [value] if isinstance(value, str) else value

    @field_validator("roles", mode="before")
    @classmethod
    def _roles(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("known_usecases", mode="before")
    @classmethod
    def _usecases(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [value]
        return value

    @property
    def engine(self) -> str | None:
        """The engine named by `backend`, or None to choose from the file."""
        if not self.backend:
            return None
        engine = BACKEND_ALIASES.get(self.backend.strip().lower())
        return None if engine == "auto" else engine

    @property
    def unknown_fields(self) -> list[str]:
        return sorted(k for k in (self.model_extra or {}) if k not in speech.CONFIG_FIELDS)


def check_config(config: dict[str, Any], *, refusal: str, param: str) -> ModelConfig:
    """A config lokal is about to write, validated; else a 400 that says `refusal`, then the
    first wrong field and why."""
    try:
        return ModelConfig.model_validate(config)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BadRequest(f"{refusal}: {where}: {first['msg']}", param=param) from None
