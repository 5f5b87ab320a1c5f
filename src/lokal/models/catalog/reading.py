"""Model configs into catalog entries: a config is validated, every path it names is
confined to the models folder, and its templates are read; what cannot be used becomes
a `BrokenEntry` with the reason (one bad config never stops the others)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from lokal import templates
from lokal.formats import localai_yaml
from lokal.models import download, localai_config, speech
from lokal.models.catalog.entries import BrokenEntry, ChatTemplates, PendingEntry
from lokal.models.config import BACKEND_ALIASES, ConfigError, ModelConfig
from lokal.transfer import paths

log = logging.getLogger(__name__)


def confine(models_path: Path, relative: str, what: str = "model file") -> Path:
    """Resolve a path named by a config inside the models folder, or refuse it (the one
    set of rules: `lokal.transfer.paths.confine`)."""
    try:
        return paths.confine(models_path, relative, what=what)
    except paths.UnsafePath as exc:
        raise ConfigError(exc.message) from None


# Templates ------------------------------------------------------------------------------

def load_templates(models_path: Path, config: ModelConfig) -> ChatTemplates:
    """The LocalAI templates a config names (none when it uses the GGUF's own)."""
    chat = _load_template(models_path, config.template.chat, "chat")
    chat_message = _load_template(models_path, config.template.chat_message, "chat_message")
    if config.template.use_tokenizer_template:
        chat = chat_message = None
    return ChatTemplates(chat=chat, chat_message=chat_message,
                         completion=_load_template(models_path, config.template.completion, "completion"),
                         function=_load_template(models_path, config.template.function, "function"))


def _is_template_name(value: str) -> bool:
    return "\n" not in value and "{{" not in value and len(value) < 256


def template_file(models_path: Path, value: str | None) -> Path | None:
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
    path = template_file(models_path, value)
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


# One config ------------------------------------------------------------------------------

def _downloads(models_path: Path, config: ModelConfig) -> tuple[list[download.Download], str]:
    """The files the config has fetched on first use, and the model file's name."""
    downloads = [download.Download(download.resolve_url(item.uri),
                                   confine(models_path, item.filename, what="download file"), item.sha256)
                 for item in config.download_files]
    model = config.parameters.model or ""
    if download.is_url(model):  # LocalAI: the model file itself given by URL
        try:
            url, name = download.resolve_url(model), download.url_file_name(model)
        except ValueError as exc:
            raise ConfigError(f"parameters.model: {exc}") from exc
        model = name
        path = confine(models_path, name)
        if all(d.path != path for d in downloads):
            downloads.append(download.Download(url, path))
    return downloads, model


def _draft_path(models_path: Path, config: ModelConfig) -> Path | None:
    speculation = config.speculation
    if speculation is not None and (speculation["type"] in localai_config.DRAFT_FILE_TYPES
                                    or (speculation["type"] == "draft_mtp" and config.draft_model)):
        if not config.draft_model:
            raise ConfigError("speculative.type draft needs draft_model: a GGUF in the models folder")
        path = confine(models_path, config.draft_model, what="draft model")
        if not path.is_file():
            raise ConfigError(f"draft_model {config.draft_model!r} does not exist in the models folder")
        return path
    if config.draft_model:
        raise ConfigError(f"draft_model is set but speculative.type is {speculation['type']!r} "  # type: ignore[index]
                          "(use type draft, or drop draft_model)")
    return None


def _named_file(models_path: Path, value: str | None, what: str, field: str,
                downloads: list[download.Download]) -> Path | None:
    """A file the config names beside the model (fetched with its downloads, or there)."""
    if value is None:
        return None
    path = confine(models_path, value, what=what)
    if not path.is_file() and all(d.path != path for d in downloads):
        raise ConfigError(f"{what} {value!r} ({field}) does not exist in the models folder")
    return path


def entry_from_config(models_path: Path, config: ModelConfig, source: Path) -> PendingEntry | BrokenEntry:
    """The config's entry, its paths checked; not yet described (see describing.settle)."""
    model_path = None
    try:
        if config.backend and config.backend.strip().lower() not in BACKEND_ALIASES:
            raise ConfigError(f"backend {config.backend!r} is not served by lokal "
                              f"(known: {', '.join(sorted(BACKEND_ALIASES))})")
        if not config.parameters.model:
            raise ConfigError("parameters.model is missing: name the model file")
        downloads, model = _downloads(models_path, config)
        model_path = confine(models_path, model)
        draft_path = _draft_path(models_path, config)
        mmproj_path = _named_file(models_path, config.mmproj, "mmproj file", "mmproj", downloads)
        voices_path = _named_file(models_path, speech.tts_config(config).voices, "voice pack", "tts.voices",
                                  downloads)
        if config.function_calling == "native" and (config.template.chat or config.template.chat_message) \
                and not config.template.use_tokenizer_template:
            raise ConfigError("function_calling: native needs the model's own chat template, but this config "
                              "renders chats with LocalAI templates (template.chat / template.chat_message); "
                              "set template.use_tokenizer_template: true, or function_calling: grammar")
        if not model_path.exists() and all(d.path != model_path for d in downloads):
            raise ConfigError(f"model file {config.parameters.model!r} does not exist in the models folder")
    except (ConfigError, OSError) as exc:
        return BrokenEntry(config.name, source, str(exc), config, model_path)
    return PendingEntry(config.name, source, config, model_path, tuple(downloads), draft_path, mmproj_path,
                        voices_path)


# A config file ---------------------------------------------------------------------------

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


def read_configs(models_path: Path, path: Path) -> list[PendingEntry | BrokenEntry]:
    """Entries for every config in one YAML file, not yet described; errors become broken
    entries."""
    fallback = path.stem
    try:
        raw = localai_yaml.load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        return [BrokenEntry(fallback, path, f"{path.name} is not valid YAML: {exc}")]
    if raw is None:
        return [BrokenEntry(fallback, path, f"{path.name} is empty")]
    entries: list[PendingEntry | BrokenEntry] = []
    for item, problem in _configs_in(raw, path):
        if item is None:
            entries.append(BrokenEntry(fallback, path, problem or "not a config"))
            continue
        name = item.get("name") if isinstance(item.get("name"), str) else fallback
        try:
            config = ModelConfig.model_validate(item)
        except ValidationError as exc:
            entries.append(BrokenEntry(name, path, f"{path.name}: {_validation_message(exc)}"))
            continue
        unknown = localai_config.unknown_options(config.option_values, config.engine)
        if unknown:
            log.warning("model %s: options %s mean nothing to lokal's %s engine; ignored", config.name,
                        ", ".join(unknown), config.engine or "llama-cpp")
        entries.append(entry_from_config(models_path, config, path))
    return entries
