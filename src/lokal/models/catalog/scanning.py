"""The models folder as catalog entries: YAML configs first, then loose model files.

A loose `.gguf` (or `.bin`, a speech `.onnx`, a diffusers folder) that no config names is
served under its file name; a loose multimodal projector is paired with the loose model
it is named for, as llama-server pairs a folder's files, and never guessed; a name
defined twice is served from its first definition, and the second is logged.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from pathlib import Path

from lokal.formats.diffusion import is_diffusers_model
from lokal.models.catalog.describing import settle
from lokal.models.catalog.entries import BrokenEntry, Entry, PendingEntry
from lokal.models.catalog.reading import read_configs
from lokal.models.config import ModelConfig

log = logging.getLogger(__name__)

MODEL_SUFFIXES = (".gguf", ".bin", ".onnx")  # .bin: whisper.cpp and old GGML files; .onnx: speech


def read_config_file(models_path: Path, path: Path) -> list[Entry]:
    """Entries for every config in one YAML file, described as far as their files allow."""
    return [settle(e, models_path) if isinstance(e, PendingEntry) else e for e in read_configs(models_path, path)]


def scan_models(models_path: Path, config_file: Path | None = None) -> list[Entry]:
    """Every model the folder offers: YAML configs first, then loose model files."""
    entries: list[PendingEntry | BrokenEntry] = []
    if models_path.is_dir():
        for path in sorted(models_path.iterdir()):
            if path.suffix.lower() in (".yaml", ".yml") and path.is_file():
                entries.extend(read_configs(models_path, path))
    if config_file is not None:
        if config_file.is_file():
            entries.extend(read_configs(models_path, config_file))
        else:
            entries.append(BrokenEntry(config_file.stem, config_file, f"config file {config_file} does not exist"))
    entries.extend(_loose(models_path, entries))
    return [settle(e, models_path) if isinstance(e, PendingEntry) else e for e in _dedupe(entries)]


def _referenced(models_path: Path, entries: list[PendingEntry | BrokenEntry]) -> set[Path]:
    """Files the configs name: never models of their own."""
    referenced = {e.model_path for e in entries if e.model_path is not None}
    referenced |= {e.mmproj_path for e in entries if isinstance(e, PendingEntry) and e.mmproj_path is not None}
    referenced |= {(models_path / e.config.diffusers.pipeline_config).resolve() for e in entries
                   if e.config is not None and e.config.diffusers is not None
                   and e.config.diffusers.pipeline_config}  # a single file's configs: not a model
    return referenced


def _loose(models_path: Path, configured: list[PendingEntry | BrokenEntry]) -> list[PendingEntry | BrokenEntry]:
    """Entries for the loose model files no config names, their projectors paired."""
    if not models_path.is_dir():
        return []
    referenced = _referenced(models_path, configured)
    root = models_path.resolve()
    loose: list[PendingEntry | BrokenEntry] = []
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
        config = ModelConfig(name=path.name)
        if root not in resolved.parents:
            loose.append(BrokenEntry(path.name, path, f"{path.name} points outside the models folder (symlink?)",
                                     config, resolved))
        else:
            loose.append(PendingEntry(path.name, path, config, resolved, ()))
    return pair_projectors(loose, projectors)


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


def pair_projectors(models: list[PendingEntry | BrokenEntry],
                    projectors: list[Path]) -> list[PendingEntry | BrokenEntry]:
    """Loose model files with their loose projectors, as llama-server pairs a folder's files:
    `mmproj-NAME.gguf` (any quantization tag on either side) goes with `NAME*.gguf`; a folder
    with one loose model and one projector pairs them. Anything else is left unpaired and
    logged, never guessed."""
    if not projectors:
        return models
    unpaired = list(projectors)
    out: list[PendingEntry | BrokenEntry] = []
    for entry in models:
        if isinstance(entry, PendingEntry):
            stem = entry.model_path.stem.lower()
            exact = [p for p in unpaired if p.stem.lower() in (f"mmproj-{stem}", f"{stem}.mmproj")]
            named = exact or [p for p in unpaired if _base_name(p.stem) == _base_name(entry.model_path.stem)]
            if len(named) == 1:
                entry = replace(entry, mmproj_path=named[0])
                unpaired.remove(named[0])
            elif len(named) > 1:
                log.error("model %s: several projectors match it (%s); name one in a YAML config "
                          "(mmproj: FILE)", entry.name, ", ".join(p.name for p in named))
        out.append(entry)
    waiting = [i for i, e in enumerate(out) if isinstance(e, PendingEntry) and e.mmproj_path is None]
    if len(unpaired) == 1 and len(out) == 1 and waiting:
        out[0] = replace(out[0], mmproj_path=unpaired.pop())  # type: ignore[type-var]
    for path in unpaired:
        log.warning("projector %s pairs with no model file: name it mmproj-MODEL.gguf beside "
                    "MODEL.gguf, or set `mmproj: %s` in the model's YAML config", path.name, path.name)
    return out


def _dedupe(entries: list[PendingEntry | BrokenEntry]) -> list[PendingEntry | BrokenEntry]:
    """One entry per name: a later duplicate is reported, never silently served."""
    seen: dict[str, PendingEntry | BrokenEntry] = {}
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
