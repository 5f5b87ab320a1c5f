"""What a model file can do, read once: a `PendingEntry` whose files are all in the
folder becomes a `ModelEntry` (or a `BrokenEntry` saying why it cannot serve).

The file's kind (GGUF, Hugging Face folder, Whisper, speech, image model) decides the
tasks it can serve and how it reranks; a config's `known_usecases` narrows them; a GGUF's
chat template says whether the model calls tools in its own format; a projector is
checked against the model before the model is said to take images.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from lokal.formats.modelfile import GGUFInfo, ModelFile, ModelFileError, inspect, is_cross_encoder, read_gguf
from lokal.models import localai_config, speech
from lokal.models.catalog.entries import BrokenEntry, ModelEntry, PendingEntry
from lokal.models.catalog.reading import load_templates, template_file
from lokal.models.config import ConfigError
from lokal.models.image_config import image_file, image_tasks

log = logging.getLogger(__name__)


def templates_waiting(entry: PendingEntry, models_path: Path) -> bool:
    """Whether a template file the config names is among its downloads still to come."""
    template = entry.config.template
    waiting = {d.path for d in entry.pending_downloads}
    return bool(waiting & {template_file(models_path, value) for value in (
        template.chat, template.chat_message, template.completion, template.function)})


def settle(entry: PendingEntry, models_path: Path) -> PendingEntry | ModelEntry | BrokenEntry:
    """The entry as far as its files allow: still pending while a download is missing,
    else described."""
    if entry.pending_downloads:
        if not templates_waiting(entry, models_path):
            try:
                load_templates(models_path, entry.config)  # a bad template is broken now, not later
            except ConfigError as exc:
                return BrokenEntry(entry.name, entry.source, str(exc), entry.config, entry.model_path)
        return entry
    return describe(entry, models_path)


def describe(entry: PendingEntry, models_path: Path) -> ModelEntry | BrokenEntry:
    """Read the entry's files once and say what it can do (or why it cannot)."""
    def broken(reason: str) -> BrokenEntry:
        return BrokenEntry(entry.name, entry.source, reason, entry.config, entry.model_path)

    config = entry.config
    try:
        chat_templates = load_templates(models_path, config)
        speech_file = speech.describe(entry.model_path, config.engine, entry.voices_path)
        if speech_file is not None:  # text to speech, voice activity detection
            return ModelEntry(entry.name, entry.source, config, entry.model_path, speech_file,
                              speech.tasks_of(speech_file), chat_templates, voices_path=entry.voices_path,
                              downloads=entry.downloads)
        model_file = image_file(entry.model_path, config.engine, config.diffusers, models_path) \
            or inspect(entry.model_path)
    except ConfigError as exc:
        return broken(str(exc))
    except (ModelFileError, OSError) as exc:
        return broken(str(exc))
    tasks, rerank_by, refused = localai_config.decide_tasks(config, model_file, abilities)
    if refused is not None:
        return broken(refused)
    draft_file = None
    if entry.draft_path is not None:
        try:
            draft_file = inspect(entry.draft_path)
        except (ModelFileError, OSError) as exc:
            return broken(f"draft model: {exc}")
    described = ModelEntry(
        entry.name, entry.source, config, entry.model_path, model_file, tasks, chat_templates,
        rerank_by=rerank_by,  # type: ignore[arg-type]
        draft_path=entry.draft_path, draft_file=draft_file,
        native_tools=model_file.gguf is not None and template_supports_tools(model_file.gguf.metadata),
        voices_path=entry.voices_path, downloads=entry.downloads)
    if entry.mmproj_path is None or not entry.mmproj_path.exists():
        return described
    try:
        if model_file.gguf is None or "chat" not in tasks:
            raise ConfigError(f"mmproj is set but {entry.model_path.name} is not a GGUF chat model")
        describe_projector(entry.mmproj_path, model_file.gguf)
    except ConfigError as exc:
        if config.mmproj is not None:  # the config asked for it: the model cannot be served as configured
            return broken(str(exc))
        # A loose projector paired by its name: the pairing was wrong, the model is fine.
        log.warning("model %s: not pairing %s with it: %s", entry.name, entry.mmproj_path.name, exc)
        return described
    return replace(described, mmproj_path=entry.mmproj_path)


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
