"""The rest of a LocalAI model config: `options:`, speculative decoding named there,
`known_usecases` and `reranking` deciding a model's tasks, LocalAI's sampling defaults,
`cutstrings` & co., and which fields lokal uses, ignores as cosmetic, or does not know.

Pure functions over the config's values; `models.config` and the planner call them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import re2

log = logging.getLogger(__name__)


def compile_regex(pattern: str) -> Any:
    """An RE2 pattern (Go's regexp syntax, linear time), or ValueError saying why not."""
    try:
        return re2.compile(pattern)
    except re2.error as exc:  # type: ignore[attr-defined]
        raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None

# `options:` -------------------------------------------------------------------------

#: llama.cpp's speculative types as LocalAI names them (dashes, underscores, aliases), to
#: the engine's; None: off.
SPEC_TYPES: dict[str, str | None] = {
    "none": None,
    "draft": "draft", "draft-simple": "draft", "draft_simple": "draft",
    "eagle3": "draft_eagle3", "draft-eagle3": "draft_eagle3", "draft_eagle3": "draft_eagle3",
    "draft-mtp": "draft_mtp", "draft_mtp": "draft_mtp",
    "draft-dflash": "draft_dflash", "draft_dflash": "draft_dflash", "dflash": "draft_dflash",
    "ngram-simple": "ngram_simple", "ngram_simple": "ngram_simple",
    "ngram-map-k": "ngram_map_k", "ngram_map_k": "ngram_map_k",
    "ngram-map-k4v": "ngram_map_k4v", "ngram_map_k4v": "ngram_map_k4v",
    "ngram-mod": "ngram_mod", "ngram_mod": "ngram_mod",
    "ngram-cache": "ngram_cache", "ngram_cache": "ngram_cache",
}
#: types that read a draft model file (draft_model); MTP may use the model's own head
DRAFT_FILE_TYPES = frozenset({"draft", "draft_eagle3", "draft_dflash"})

# option name (and aliases) -> (speculative parameter, type)
_SPEC_PARAMS: dict[str, tuple[str, type]] = {}
for _names, _param, _kind in (
        (("spec_n_max", "draft_max", "n_draft"), "n_max", int),
        (("spec_n_min", "draft_min"), "n_min", int),
        (("spec_p_min", "draft_p_min"), "p_min", float),
        (("spec_ngram_size_n", "ngram_size_n", "spec_ngram_map_k_size_n", "spec_ngram_map_k4v_size_n"),
         "size_n", int),
        (("spec_ngram_size_m", "ngram_size_m", "spec_ngram_map_k_size_m", "spec_ngram_map_k4v_size_m"),
         "size_m", int),
        (("spec_ngram_min_hits", "ngram_min_hits", "spec_ngram_map_k_min_hits", "spec_ngram_map_k4v_min_hits"),
         "min_hits", int),
        (("spec_ngram_mod_n_match",), "n_match", int),
        (("spec_ngram_mod_n_max",), "n_max", int),
        (("spec_ngram_mod_n_min",), "n_min", int)):
    for _name in _names:
        _SPEC_PARAMS[_name] = (_param, _kind)

REASONING_FORMATS = ("none", "auto", "deepseek", "deepseek-legacy", "deepseek_legacy")
#: llama.cpp options lokal maps; the value says how
LLAMA_OPTIONS = frozenset({"use_jinja", "jinja", "spec_type", "speculative_type", "reasoning_format",
                           "parallel", "n_parallel", *_SPEC_PARAMS})


class OptionError(ValueError):
    """An `options:` entry with a value lokal cannot use."""


def parse_options(options: Any) -> dict[str, str]:
    """LocalAI's `options:` list (`name:value`, or a bare `name` meaning true) as a dict."""
    out: dict[str, str] = {}
    for item in options or []:
        text = str(item).strip()
        if not text:
            continue
        name, sep, value = text.partition(":")
        out[name.strip()] = value.strip() if sep else "true"
    return out


def _number(name: str, value: str, kind: type) -> int | float:
    try:
        return kind(value)
    except ValueError:
        raise OptionError(f"options: {name}:{value} is not a {'whole ' if kind is int else ''}number") from None


def speculation(options: dict[str, str], draft_model: str | None, n_draft: int | None) -> dict[str, Any] | None:
    """Speculative decoding the options ask for (engine values), None when they do not."""
    raw = options.get("spec_type", options.get("speculative_type"))
    if raw is None:
        return None
    kinds = [k.strip().lower() for k in raw.split(",") if k.strip()]
    if len(kinds) > 1:
        raise OptionError(f"options: spec_type:{raw} chains several types; lokal runs one (name one of them)")
    kind = kinds[0] if kinds else "none"
    if kind not in SPEC_TYPES:
        raise OptionError(f"options: spec_type:{raw} is not a speculative type (known: "
                          f"{', '.join(sorted(SPEC_TYPES))})")
    engine_type = SPEC_TYPES[kind]
    if engine_type is None:
        return None
    values: dict[str, Any] = {"type": engine_type}
    for name, value in options.items():
        if name in _SPEC_PARAMS:
            param, number = _SPEC_PARAMS[name]
            values[param] = _number(name, value, number)
    if n_draft is not None:
        values.setdefault("n_max", n_draft)
    if engine_type in DRAFT_FILE_TYPES and not draft_model:
        raise OptionError(f"options: spec_type:{kind} needs draft_model, a GGUF in the models folder")
    return values


def speculation_problem(values: dict[str, Any] | None, gguf: Any, draft_path: Any) -> str | None:
    """Why speculative decoding as asked cannot run on this model (a load error), or None.
    MTP drafts with the model's own multi-token-prediction head unless a draft file is
    named: the GGUF must carry one (`<arch>.nextn_predict_layers`)."""
    if values is None:
        return None
    kind = values["type"]
    if kind == "draft_mtp" and draft_path is None:
        layers = gguf.arch_value("nextn_predict_layers") if gguf is not None else None
        if not layers:
            return ("options ask for MTP speculative decoding (spec_type:draft-mtp) but the model file has no "
                    "multi-token-prediction head (no nextn_predict_layers in its GGUF header) and no "
                    "draft_model names one; drop spec_type or use a GGUF converted with its MTP tensors")
    return None


def engine_params(options: dict[str, str]) -> dict[str, Any]:
    """llama.cpp engine settings the options ask for (beyond speculation)."""
    out: dict[str, Any] = {}
    fmt = options.get("reasoning_format")
    if fmt is not None:
        if fmt not in REASONING_FORMATS:
            raise OptionError(f"options: reasoning_format:{fmt} is not one of {', '.join(REASONING_FORMATS)}")
        out["reasoning_format"] = fmt.replace("_", "-")
    parallel = options.get("parallel", options.get("n_parallel"))
    if parallel is not None:
        slots = _number("parallel", parallel, int)
        if slots < 1:
            raise OptionError(f"options: parallel:{parallel} must be at least 1")
        out["parallel"] = slots
    jinja = options.get("use_jinja", options.get("jinja"))
    if jinja is not None and jinja.lower() not in ("true", "1", "yes", "on"):
        log.warning("options: use_jinja:%s: lokal always renders a GGUF's chat template with Jinja "
                    "(LocalAI templates are used when the config names them)", jinja)
    return out


def unknown_options(options: dict[str, str], engine: str | None) -> list[str]:
    """Options the engine has no use for (to log, once per model read)."""
    if engine in (None, "llama-cpp"):
        return sorted(name for name in options if name not in LLAMA_OPTIONS)
    return sorted(options)


# Tasks ----------------------------------------------------------------------------------

#: LocalAI usecases to the lokal tasks of the same kind. Chat and completion are one
#: modality (LocalAI's text group; a chat model answers completions too).
USECASE_TASKS: dict[str, frozenset[str]] = {
    "chat": frozenset({"chat", "complete"}),
    "completion": frozenset({"chat", "complete"}),
    "edit": frozenset({"chat", "complete"}),
    "llm": frozenset({"chat", "complete"}),
    "embeddings": frozenset({"embed"}),
    "rerank": frozenset({"rerank"}),
    "transcript": frozenset({"transcribe"}),
    "tts": frozenset({"speak"}),
    "vad": frozenset({"vad"}),
    "image": frozenset({"image", "image_edit"}),
    "vision": frozenset(),  # an ability of a chat model (its mmproj), not a task of its own
    "tokenize": frozenset(),
}


def usecase_tasks(usecases: list[str]) -> tuple[frozenset[str], list[str]]:
    """The tasks known_usecases allow, and the usecases lokal has no task for."""
    allowed: set[str] = set()
    unserved: list[str] = []
    for raw in usecases:
        name = str(raw).strip().lower()
        name = name[5:] if name.startswith("flag_") else name
        if name in USECASE_TASKS:
            allowed |= USECASE_TASKS[name]
        else:
            unserved.append(name)
    return frozenset(allowed), unserved


def wants_embeddings(config: Any) -> bool:
    """A text model whose known_usecases name embeddings (or rerank) is loaded to embed."""
    usecases = [str(u).lower().removeprefix("flag_") for u in (config.known_usecases or [])]
    return bool(config.embeddings) or "embeddings" in usecases or "rerank" in usecases


def decide_tasks(config: Any, model_file: Any, abilities: Callable[..., tuple[frozenset[str], str | None]],
                 ) -> tuple[frozenset[str], str | None, str | None]:
    """(tasks, rerank_by, error): what the file can do, narrowed to what the config's
    known_usecases name; `reranking: true` makes an encoder GGUF a cross-encoder."""
    embeddings = wants_embeddings(config) if config is not None else False
    tasks, rerank_by = abilities(model_file, embeddings)
    if config is None:
        return tasks, rerank_by, None
    gguf = getattr(model_file, "gguf", None)
    if getattr(config, "reranking", False) and gguf is not None and gguf.is_encoder:
        tasks, rerank_by = frozenset({"rerank"}), "cross-encoder"
    if config.known_usecases:
        allowed, unserved = usecase_tasks(config.known_usecases)
        narrowed = tasks & allowed
        if not narrowed:
            named = ", ".join(str(u) for u in config.known_usecases)
            why = (f"lokal has no engine for {', '.join(unserved)}" if unserved
                   else f"the model file serves {', '.join(sorted(tasks)) or 'nothing'}")
            return frozenset(), None, f"its config's known_usecases ({named}) name no task this model can serve " \
                                      f"here: {why}"
        if "rerank" not in narrowed:
            rerank_by = None
        tasks = narrowed
    return tasks, rerank_by, None


# Sampling defaults ----------------------------------------------------------------------

#: LocalAI's generic sampling defaults, filled in for what neither a request nor the
#: config sets (LocalAI: core/config generic defaults; top_k only for llama.cpp's family).
SAMPLING_DEFAULTS = {"temperature": 0.9, "top_p": 0.95, "top_k": 40, "min_p": 0.0}


def sampling_defaults(engine: str | None) -> dict[str, Any]:
    return dict(SAMPLING_DEFAULTS) if engine in (None, "llama-cpp") else {}


# cutstrings & co. -----------------------------------------------------------------------

@dataclass
class Finetune:
    """LocalAI's last touches to a whole reply: `cutstrings` (regexes removed),
    `extract_regex` (only what they match, when they match), `trimspace` (a prefix cut
    and spaces trimmed), `trimsuffix` (a suffix cut and spaces trimmed)."""

    cut: list[Any] = field(default_factory=list)
    extract: list[Any] = field(default_factory=list)
    trimspace: list[str] = field(default_factory=list)
    trimsuffix: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.cut or self.extract or self.trimspace or self.trimsuffix)

    def apply(self, text: str) -> str:
        for regex in self.cut:
            text = regex.sub("", text)
        found = "".join(m.group(0) for m in (r.search(text) for r in self.extract) if m is not None)
        if found:
            text = found
        for prefix in self.trimspace:
            text = (text[len(prefix):] if prefix and text.startswith(prefix) else text).strip()
        for suffix in self.trimsuffix:
            text = (text[:-len(suffix)] if suffix and text.endswith(suffix) else text).strip()
        return text


def finetune(config: Any) -> Finetune:
    extra = getattr(config, "model_extra", None) or {}

    def strings(name: str) -> list[str]:
        value = getattr(config, name, None) if name in type(config).model_fields else extra.get(name)
        if value is None:
            return []
        return [str(v) for v in (value if isinstance(value, list) else [value])]

    return Finetune([compile_regex(p) for p in strings("cutstrings")],
                    [compile_regex(p) for p in strings("extract_regex")],
                    strings("trimspace"), strings("trimsuffix"))


# Which fields lokal uses ----------------------------------------------------------------

USED = frozenset({
    "name", "backend", "parameters", "context_size", "threads", "f16", "mmap", "gpu_layers", "stopwords",
    "roles", "system_prompt", "template", "known_usecases", "download_files", "embeddings", "mmproj",
    "truncate", "token_ids", "draft_model", "n_draft", "speculative", "function_calling", "function",
    "options", "reranking", "cutstrings", "extract_regex", "trimspace", "trimsuffix",
    # speech (models.speech) and images (models.image_config)
    "tts", "diffusers", "step", "cfg_scale", "messages",
    # the KV cache and attention (engines.llamacpp), the embedding runtime (engines.onnx)
    "cache_type_k", "cache_type_v", "flash_attention", "embeddings_backend", "quantization",
})
USED_PARAMETERS = frozenset({"model", "temperature", "top_p", "top_k", "min_p", "max_tokens", "seed",
                             "repeat_penalty", "presence_penalty", "frequency_penalty", "language", "batch"})
USED_TEMPLATE = frozenset({"chat", "chat_message", "completion", "function", "use_tokenizer_template",
                           "join_chat_messages_by_character"})
USED_FUNCTION = frozenset({
    "disable_no_action", "no_action_function_name", "no_action_description_name", "grammar",
    "response_regex", "json_regex_match", "argument_regex", "argument_regex_key_name",
    "argument_regex_value_name", "replace_function_results", "replace_llm_results", "capture_llm_results",
    "function_name_key", "function_arguments_key", "automatic_tool_parsing_fallback",
    "xml_format_preset", "disable_peg_parser"})
USED_GRAMMAR = frozenset({"parallel_calls", "disable_parallel_new_lines", "mixed_mode", "no_mixed_free_string",
                          "disable", "prefix", "expect_strings_after_json", "properties_order", "schema_type",
                          "triggers"})
#: fields that change nothing, in LocalAI or here: what a gallery shows, or keys LocalAI
#: itself does not read where they are written (listed in the README)
COSMETIC = frozenset({
    "description", "usage", "icon", "license", "urls", "tags", "last_checked",
    "known_input_modalities", "known_output_modalities",
    # LocalAI reads these at the top level only; under parameters: it ignores them too
    "parameters.context_size", "parameters.f16", "parameters.mmap", "parameters.threads",
    # no such field in LocalAI's function config
    "function.return_name_in_function_response", "function.grammar.function_arguments_key",
})
#: the KV-cache and attention settings, passed to the engine by issue #30's work
PENDING_ENGINE: frozenset[str] = frozenset()  # (none left: issue #30's work passes them on)


def ignored_fields(config: dict[str, Any]) -> list[str]:
    """Fields of a config (as a mapping) that lokal neither uses nor lists as cosmetic."""
    out: list[str] = []

    def check(mapping: Any, prefix: str, used: frozenset[str]) -> None:
        if not isinstance(mapping, dict):
            return
        for key in mapping:
            path = f"{prefix}{key}"
            if key not in used and path not in COSMETIC:
                out.append(path)

    check(config, "", USED | COSMETIC | PENDING_ENGINE)
    check(config.get("parameters"), "parameters.", USED_PARAMETERS)
    check(config.get("template"), "template.", USED_TEMPLATE)
    check(config.get("function"), "function.", USED_FUNCTION)
    function = config.get("function")
    if isinstance(function, dict):
        check(function.get("grammar"), "function.grammar.", USED_GRAMMAR)
    return sorted(out)


def pending_fields(config: dict[str, Any]) -> list[str]:
    return sorted(k for k in config if k in PENDING_ENGINE)

