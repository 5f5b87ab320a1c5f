"""LocalAI-style model configs: one YAML per model, read from the models folder.

A config that cannot be used never stops the others: it becomes a `ModelEntry`
with an `error` that `lokal models list`, the log and requests for it report.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lokal import templates
from lokal.formats import localai_yaml
from lokal.formats.diffusion import is_diffusers_model
from lokal.formats.modelfile import GGUFInfo, ModelFile, ModelFileError, inspect, is_cross_encoder, read_gguf
from lokal.models import download, localai_config, speech
from lokal.models.image_config import DiffusersOptions, image_file, image_tasks
from lokal.models.localai_functions import FunctionConfig
from lokal.transfer import paths

log = logging.getLogger(__name__)

MODEL_SUFFIXES = (".gguf", ".bin", ".onnx")  # .bin: old GGML downloads, reported as legacy; .onnx: speech
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


@dataclass
class ChatTemplates:
    """LocalAI templates resolved and parsed, ready to render."""

    chat: templates.Template | None = None
    chat_message: templates.Template | None = None
    completion: templates.Template | None = None
    function: templates.Template | None = None

    @property
    def renders_chat(self) -> bool:
        return self.chat is not None or self.chat_message is not None


@dataclass
class ModelEntry:
    """A servable name: its config, where it came from, and whether it can load."""

    name: str
    source: Path | None  # the YAML file, or the model file itself for loose files
    config: ModelConfig | None = None
    model_path: Path | None = None
    templates: ChatTemplates = field(default_factory=ChatTemplates)
    error: str | None = None
    downloads: list[download.Download] = field(default_factory=list)
    templates_pending: bool = False  # a template file is among the downloads still to come
    # What the model is, read from its file once (see catalog.describe).
    file: ModelFile | None = None
    tasks: frozenset[str] = frozenset()  # chat, complete, embed, rerank, transcribe
    rerank_by: str | None = None  # "cross-encoder", or "cosine" of embeddings
    draft_path: Path | None = None  # a draft model for speculative decoding, in the folder
    draft_file: ModelFile | None = None
    # Vision: the projector file (config `mmproj:`, or a loose mmproj*.gguf paired by name)
    # and, once described, whether it lets the model take images.
    mmproj_path: Path | None = None
    vision: bool = False
    # Whether the GGUF's own chat template knows tools (read from its header once).
    native_tools: bool = False
    # A speech model's voice pack (Kokoro: config `tts.voices`), in the folder.
    voices_path: Path | None = None

    @property
    def tool_format(self) -> Literal["native", "grammar"]:
        """How this model calls tools: its own format through its chat template
        ("native": tools passed to the template, the engine parses the calls), or
        lokal's JSON envelope held by a grammar. LocalAI templates always mean the
        grammar: they have no place for tools."""
        if self.templates.renders_chat:
            return "grammar"
        mode = self.config.function_calling if self.config is not None else "auto"
        if mode == "auto":
            return "native" if self.native_tools else "grammar"
        return mode

    @property
    def pending_downloads(self) -> list[download.Download]:
        """Files this model needs that are not in the models folder yet."""
        return [d for d in self.downloads if not d.path.exists()]

    @property
    def ok(self) -> bool:
        return self.error is None


def confine(models_path: Path, relative: str, what: str = "model file") -> Path:
    """Resolve a path named by a config inside the models folder, or refuse it (the one
    set of rules: `lokal.transfer.paths.confine`)."""
    try:
        return paths.confine(models_path, relative, what=what)
    except paths.UnsafePath as exc:
        raise ConfigError(exc.message) from None


def load_templates(models_path: Path, config: ModelConfig) -> ChatTemplates:
    """The LocalAI templates a config names (none when it uses the GGUF's own)."""
    loaded = ChatTemplates(
        chat=_load_template(models_path, config.template.chat, "chat"),
        chat_message=_load_template(models_path, config.template.chat_message, "chat_message"),
        completion=_load_template(models_path, config.template.completion, "completion"),
        function=_load_template(models_path, config.template.function, "function"),
    )
    if config.template.use_tokenizer_template:
        loaded.chat = loaded.chat_message = loaded.function = None
    return loaded


def _is_template_name(value: str) -> bool:
    return "\n" not in value and "{{" not in value and len(value) < 256


def _template_file(models_path: Path, value: str | None) -> Path | None:
    """The .tmpl file a template value names, when it is a name inside the folder."""
    if not value or not _is_template_name(value):
        return None
    try:
        return confine(models_path, value if value.endswith(".tmpl") else f"{value}.tmpl", what="template")
    except ConfigError:
        return None


def _load_template(models_path: Path, value: str | None, kind: str) -> templates.Template | None:
    """A template named like LocalAI: `NAME` reads NAME.tmpl if it exists, else is the text."""
    if not value:
        return None
    path = _template_file(models_path, value)
    if path is not None:
        file_name = value if value.endswith(".tmpl") else f"{value}.tmpl"
        if path.is_file():
            try:
                source = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"cannot read template {file_name}: {exc}") from exc
            return _parse_template(source, file_name)
    return _parse_template(value, f"template.{kind}")


def _parse_template(source: str, name: str) -> templates.Template:
    try:
        return templates.parse(source, name=name)
    except templates.TemplateError as exc:
        raise ConfigError(f"template does not parse: {exc}") from exc


def _entry_from_config(models_path: Path, config: ModelConfig, source: Path) -> ModelEntry:
    entry = ModelEntry(name=config.name, source=source, config=config)
    try:
        if config.backend and config.backend.strip().lower() not in BACKEND_ALIASES:
            raise ConfigError(
                f"backend {config.backend!r} is not served by lokal "
                f"(known: {', '.join(sorted(BACKEND_ALIASES))})"
            )
        if not config.parameters.model:
            raise ConfigError("parameters.model is missing: name the model file")
        model = config.parameters.model
        for item in config.download_files:
            entry.downloads.append(download.Download(
                download.resolve_url(item.uri), confine(models_path, item.filename, what="download file"),
                item.sha256))
        if download.is_url(model):  # LocalAI: the model file itself given by URL
            try:
                url, name = download.resolve_url(model), download.url_file_name(model)
            except ValueError as exc:
                raise ConfigError(f"parameters.model: {exc}") from exc
            model = name
            path = confine(models_path, name)
            if all(d.path != path for d in entry.downloads):
                entry.downloads.append(download.Download(url, path))
        entry.model_path = confine(models_path, model)
        speculation = config.speculation
        if speculation is not None and (speculation["type"] in localai_config.DRAFT_FILE_TYPES
                                        or (speculation["type"] == "draft_mtp" and config.draft_model)):
            if not config.draft_model:
                raise ConfigError("speculative.type draft needs draft_model: a GGUF in the models folder")
            entry.draft_path = confine(models_path, config.draft_model, what="draft model")
            if not entry.draft_path.is_file():
                raise ConfigError(f"draft_model {config.draft_model!r} does not exist in the models folder")
        elif config.draft_model:
            raise ConfigError(f"draft_model is set but speculative.type is {speculation['type']!r} "
                              "(use type draft, or drop draft_model)")  # type: ignore[index]
        if config.mmproj is not None:
            entry.mmproj_path = confine(models_path, config.mmproj, what="mmproj file")
            fetched = any(d.path == entry.mmproj_path for d in entry.downloads)
            if not entry.mmproj_path.is_file() and not fetched:
                raise ConfigError(f"mmproj file {config.mmproj!r} does not exist in the models folder")
        voices = speech.tts_config(config).voices
        if voices is not None:
            entry.voices_path = confine(models_path, voices, what="voice pack (tts.voices)")
            if not entry.voices_path.is_file() and all(d.path != entry.voices_path for d in entry.downloads):
                raise ConfigError(f"voice pack {voices!r} (tts.voices) does not exist in the models folder")
        if config.function_calling == "native" and (config.template.chat or config.template.chat_message) \
                and not config.template.use_tokenizer_template:
            raise ConfigError("function_calling: native needs the model's own chat template, but this config "
                              "renders chats with LocalAI templates (template.chat / template.chat_message); "
                              "set template.use_tokenizer_template: true, or function_calling: grammar")
        waiting = {d.path for d in entry.downloads if not d.path.exists()}
        if waiting & {_template_file(models_path, value) for value in (
                config.template.chat, config.template.chat_message, config.template.completion,
                config.template.function)}:
            entry.templates_pending = True  # read once the downloads are in
        else:
            entry.templates = load_templates(models_path, config)
        fetched_later = any(d.path == entry.model_path for d in entry.downloads)
        if not entry.model_path.exists() and not fetched_later:
            raise ConfigError(f"model file {config.parameters.model!r} does not exist in the models folder")
    except (ConfigError, OSError) as exc:
        entry.error = str(exc)
    return entry


def _configs_in(raw: Any, source: Path) -> list[tuple[dict[str, Any] | None, str | None]]:
    """The config mappings a YAML document holds (a mapping, or a list of them)."""
    items = raw if isinstance(raw, list) else [raw]
    out: list[tuple[dict[str, Any] | None, str | None]] = []
    for item in items:
        if isinstance(item, dict):
            out.append((item, None))
        else:
            out.append((None, f"{source.name}: expected a mapping of config fields, got {type(item).__name__}"))
    return out


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "config"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def read_config_file(models_path: Path, path: Path) -> list[ModelEntry]:
    """Entries for every config in one YAML file; errors become failed entries."""
    fallback = path.stem
    try:
        raw = localai_yaml.load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        return [ModelEntry(name=fallback, source=path, error=f"{path.name} is not valid YAML: {exc}")]
    if raw is None:
        return [ModelEntry(name=fallback, source=path, error=f"{path.name} is empty")]
    entries = []
    for item, problem in _configs_in(raw, path):
        if item is None:
            entries.append(ModelEntry(name=fallback, source=path, error=problem))
            continue
        name = item.get("name") if isinstance(item.get("name"), str) else fallback
        try:
            config = ModelConfig.model_validate(item)
        except ValidationError as exc:
            entries.append(ModelEntry(name=name, source=path,
                                      error=f"{path.name}: {_validation_message(exc)}"))
            continue
        unknown = localai_config.unknown_options(config.option_values, config.engine)
        if unknown:
            log.warning("model %s: options %s mean nothing to lokal's %s engine; ignored", config.name,
                        ", ".join(unknown), config.engine or "llama-cpp")
        entries.append(_entry_from_config(models_path, config, path))
    return entries


def scan_models(models_path: Path, config_file: Path | None = None) -> list[ModelEntry]:
    """Every model the folder offers: YAML configs first, then loose model files."""
    entries: list[ModelEntry] = []
    if models_path.is_dir():
        for path in sorted(models_path.iterdir()):
            if path.suffix.lower() in (".yaml", ".yml") and path.is_file():
                entries.extend(read_config_file(models_path, path))
    if config_file is not None:
        if config_file.is_file():
            entries.extend(read_config_file(models_path, config_file))
        else:
            entries.append(ModelEntry(name=config_file.stem, source=config_file,
                                      error=f"config file {config_file} does not exist"))
    referenced = {e.model_path for e in entries if e.model_path is not None}
    referenced |= {e.mmproj_path for e in entries if e.mmproj_path is not None}
    referenced |= {(models_path / e.config.diffusers.pipeline_config).resolve() for e in entries
                   if e.config is not None and e.config.diffusers is not None
                   and e.config.diffusers.pipeline_config}  # a single file's configs: not a model
    if models_path.is_dir():
        root = models_path.resolve()
        loose: list[ModelEntry] = []
        projectors: list[Path] = []
        for path in sorted(models_path.iterdir()):
            if (path.suffix.lower() not in MODEL_SUFFIXES or not path.is_file()) \
                    and not is_diffusers_model(path):  # an image model's folder is a model too
                continue
            resolved = path.resolve()
            if resolved in referenced:
                continue
            if is_projector_name(path.name):
                if root in resolved.parents:
                    projectors.append(resolved)  # a projector, never a model of its own
                continue
            entry = ModelEntry(name=path.name, source=path, config=ModelConfig(name=path.name),
                               model_path=resolved)
            if root not in resolved.parents:
                entry.error = f"{path.name} points outside the models folder (symlink?)"
            loose.append(entry)
        pair_projectors(loose, projectors)
        entries.extend(loose)
    entries = _dedupe(entries)
    for entry in entries:
        describe(entry, models_path)
    return entries


def is_projector_name(name: str) -> bool:
    """A loose GGUF that is a multimodal projector by its name (llama.cpp's `mmproj-*.gguf`,
    also `*-mmproj-*.gguf` and `*.mmproj.gguf`)."""
    lower = name.lower()
    return lower.endswith(".gguf") and "mmproj" in lower


# Tags a GGUF file name ends with that say how it was quantized, not what model it is.
_QUANT_TAG = re.compile(r"([-_.](?:i?q\d[a-z0-9_]*|f16|f32|bf16|fp16|fp32|model))+$", re.IGNORECASE)


def _base_name(stem: str) -> str:
    stem = re.sub(r"(?i)^mmproj[-_.]?|[-_.]?mmproj$", "", stem)
    stem = re.sub(r"(?i)[-_.]mmproj[-_.]", "-", stem)
    return _QUANT_TAG.sub("", stem).lower()


def pair_projectors(models: list[ModelEntry], projectors: list[Path]) -> None:
    """Give loose model files their loose projectors, as llama-server pairs a folder's files:
    `mmproj-NAME.gguf` (any quantization tag on either side) goes with `NAME*.gguf`; a folder
    with one loose model and one projector pairs them. Anything else is left unpaired and
    logged, never guessed."""
    if not projectors:
        return
    unpaired = list(projectors)
    for entry in models:
        assert entry.model_path is not None
        base = _base_name(entry.model_path.stem)
        exact = [p for p in unpaired if p.stem.lower() in (f"mmproj-{entry.model_path.stem.lower()}",
                                                           f"{entry.model_path.stem.lower()}.mmproj")]
        named = exact or [p for p in unpaired if _base_name(p.stem) == base]
        if len(named) == 1:
            entry.mmproj_path = named[0]
            unpaired.remove(named[0])
        elif len(named) > 1:
            log.error("model %s: several projectors match it (%s); name one in a YAML config "
                      "(mmproj: FILE)", entry.name, ", ".join(p.name for p in named))
    waiting = [e for e in models if e.mmproj_path is None]
    if len(unpaired) == 1 and len(models) == 1 and waiting:
        waiting[0].mmproj_path = unpaired.pop()
    for path in unpaired:
        log.warning("projector %s pairs with no model file: name it mmproj-MODEL.gguf beside "
                    "MODEL.gguf, or set `mmproj: %s` in the model's YAML config", path.name, path.name)


def describe_projector(path: Path, model: GGUFInfo | None) -> GGUFInfo:
    """The projector's header, checked against the model; ConfigError says what is wrong."""
    try:
        info = read_gguf(path)
    except ModelFileError as exc:
        raise ConfigError(f"mmproj file: {exc}") from exc
    if info.architecture != "clip" and info.metadata.get("general.type") != "mmproj":
        raise ConfigError(f"mmproj file {path.name} is not a multimodal projector "
                          f"(its architecture is {info.architecture or 'unknown'!r}, not 'clip')")
    if not info.metadata.get("clip.has_vision_encoder"):
        raise ConfigError(f"mmproj file {path.name} has no vision encoder (lokal serves image "
                          "input only)")
    projected = info.metadata.get("clip.vision.projection_dim")
    width = model.arch_value("embedding_length") if model is not None else None
    if isinstance(projected, int) and isinstance(width, int) and projected != width:
        raise ConfigError(f"mmproj file {path.name} projects images to {projected} dimensions but "
                          f"the model's embeddings have {width}: it belongs to another model")
    return info


def abilities(model_file: ModelFile, embeddings: bool) -> tuple[frozenset[str], str | None]:
    """The tasks a model file serves and how it reranks; `embeddings` is the
    config's flag that lets a chat GGUF embed too."""
    if model_file.diffusion is not None:
        return image_tasks(model_file.diffusion), None
    if model_file.kind in ("whisper-ct2", "whisper-ggml"):
        return frozenset({"transcribe"}), None
    if model_file.kind == "hf":
        if is_cross_encoder(model_file.hf_config):
            return frozenset({"rerank"}), "cross-encoder"
        return frozenset({"embed", "rerank"}), "cosine"
    gguf = model_file.gguf
    assert gguf is not None
    if gguf.is_reranker:
        return frozenset({"rerank"}), "cross-encoder"
    if gguf.is_encoder:
        return frozenset({"embed", "rerank"}), "cosine"
    if embeddings:
        return frozenset({"chat", "complete", "embed", "rerank"}), "cosine"
    return frozenset({"chat", "complete"}), None


# A Jinja statement or expression that uses `tools` or `tool_calls` (the variables
# llama.cpp's chat handling gives a template: `{%- if tools %}`, `message.tool_calls`).
_JINJA_BLOCK = re.compile(r"\{[{%](.*?)[%}]\}", re.DOTALL)
_TOOL_NAMES = re.compile(r"\b(?:tools|tool_calls)\b")


def template_supports_tools(metadata: dict[str, Any]) -> bool:
    """Whether a GGUF's chat template takes tools: a template made for tool use
    (`tokenizer.chat_template.tool_use`, which llama.cpp picks when tools are sent),
    or a main template whose Jinja code uses `tools` or `tool_calls`."""
    if isinstance(metadata.get("tokenizer.chat_template.tool_use"), str):
        return True
    template = metadata.get("tokenizer.chat_template")
    if not isinstance(template, str):
        return False
    return any(_TOOL_NAMES.search(block) for block in _JINJA_BLOCK.findall(template))


def describe(entry: ModelEntry, models_path: Path | None = None) -> None:
    """Read the entry's model file once and record what it can do (or why not)."""
    if entry.error is not None or entry.model_path is None or not entry.model_path.exists():
        return
    try:
        engine = entry.config.engine if entry.config is not None else None
        speech_file = speech.describe(entry.model_path, engine, entry.voices_path)
        if speech_file is not None:  # text to speech, voice activity detection
            entry.file, entry.tasks = speech_file, speech.tasks_of(speech_file)
            return
        config = entry.config
        entry.file = image_file(entry.model_path, config.engine if config is not None else None,
                                config.diffusers if config is not None else None, models_path) \
            or inspect(entry.model_path)
    except (ModelFileError, OSError) as exc:
        entry.error = str(exc)
        return
    entry.tasks, entry.rerank_by, refused = localai_config.decide_tasks(entry.config, entry.file, abilities)
    if refused is not None:
        entry.error = refused
        return
    if entry.file.gguf is not None:
        entry.native_tools = template_supports_tools(entry.file.gguf.metadata)
    if entry.draft_path is not None:
        try:
            entry.draft_file = inspect(entry.draft_path)
        except (ModelFileError, OSError) as exc:
            entry.error = f"draft model: {exc}"
    if entry.mmproj_path is not None and entry.mmproj_path.exists():
        configured = entry.config is not None and entry.config.mmproj is not None
        try:
            if entry.file.gguf is None or "chat" not in entry.tasks:
                raise ConfigError(f"mmproj is set but {entry.model_path.name} is not a GGUF chat model")
            describe_projector(entry.mmproj_path, entry.file.gguf)
        except ConfigError as exc:
            if configured:  # the config asked for it: the model cannot be served as configured
                entry.error = str(exc)
                return
            # A loose projector paired by its name: the pairing was wrong, the model is fine.
            log.warning("model %s: not pairing %s with it: %s", entry.name, entry.mmproj_path.name, exc)
            entry.mmproj_path = None
            return
        entry.vision = True


def _dedupe(entries: list[ModelEntry]) -> list[ModelEntry]:
    """One entry per name: a later duplicate is reported, never silently served."""
    seen: dict[str, ModelEntry] = {}
    out = []
    for entry in entries:
        if entry.name in seen:
            first = seen[entry.name]
            log.error("model %r is defined twice (%s and %s); using the first",
                      entry.name, first.source, entry.source)
            continue
        seen[entry.name] = entry
        out.append(entry)
    return out
