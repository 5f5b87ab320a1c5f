"""Which models own which files in the models folder, and the checks an install plan passes
before it may claim its name: no silent replacement, no writing another model's files, enough
free disk space."""

from __future__ import annotations

from pathlib import Path

from lokal.errors import Conflict, InsufficientStorage
from lokal.install.planning import FILE_FIELDS, Plan
from lokal.install.records import read_records
from lokal.models.catalog import scan_models
from lokal.transfer.downloader import DISK_RESERVE, Downloader, file_sha256, partial_path
from lokal.units import format_size


class ModelExists(Conflict):
    """An install of a name that is taken; `same_source`: the model there was installed from
    the same reference (an Ollama pull of it is already done)."""

    def __init__(self, name: str, *, same_source: bool) -> None:
        super().__init__(f"a model named {name!r} exists already; install with --force "
                         '(HTTP: "force": true) to replace it, or choose another --name', param="name")
        self.name = name
        self.same_source = same_source


def file_users(models_path: Path, config_file: Path | None, exclude: str | None) -> dict[Path, set[str]]:
    """Which models use which files (by their configs and install records)."""
    users: dict[Path, set[str]] = {}

    def add(path: Path | None, who: str) -> None:
        if path is not None:
            users.setdefault(path.resolve(), set()).add(who)

    for entry in scan_models(models_path, config_file):
        if entry.name == exclude:
            continue
        add(entry.model_path, entry.name)
        for item in entry.downloads if entry.state != "broken" else ():  # type: ignore[union-attr]
            add(item.path, entry.name)
        config = entry.config
        for field_name in FILE_FIELDS:
            value = (config.model_extra or {}).get(field_name) if config is not None else None
            if isinstance(value, str):
                add(models_path / value, entry.name)
        if entry.source is not None and entry.source.suffix.lower() in (".yaml", ".yml"):
            add(entry.source, entry.name)
    for record in read_records(models_path):
        if record.get("name") == exclude:
            continue
        for rel in record.get("files", []) + record.get("templates", []) + [record.get("config")]:
            if isinstance(rel, str):
                add(models_path / rel, str(record.get("name")))
    return users

def check_conflicts(plan: Plan, force: bool, models_path: Path, config_file: Path | None) -> None:
    """Refuse a plan that would replace a model without force, overwrite a config defined
    elsewhere, or write another model's files; mark the files already in place."""
    existing = {e.name: e for e in scan_models(models_path, config_file)}
    current = existing.get(plan.name)
    config_exists = plan.config_path.exists() or plan.config_path.with_suffix(".yml").exists()
    if (current is not None or config_exists) and not force:
        same = any(r.get("name") == plan.name and r.get("source") == plan.source for r in read_records(models_path))
        raise ModelExists(plan.name, same_source=same)
    if current is not None and current.source is not None \
            and current.source.resolve() != plan.config_path.resolve():
        raise Conflict(f"model {plan.name!r} is defined in {current.source.name}, which an install "
                       "does not overwrite; choose another name", param="name")
    plan.replace = current is not None or config_exists
    users = file_users(models_path, config_file, exclude=plan.name)
    for spec in plan.files:
        others = users.get(spec.target.resolve(), set())
        if spec.target.is_dir():
            raise Conflict(f"{spec.filename} is a folder in the models folder", param="files")
        if spec.target.exists():
            matches = spec.sha256 is not None and file_sha256(spec.target) == spec.sha256
            if matches:
                spec.skip = True
                continue
            if others:
                raise Conflict(f"{spec.filename} belongs to model {', '.join(sorted(others))}; an "
                               "install may not overwrite another model's files", param="files")
            if not force:
                raise Conflict(f"{spec.filename} exists in the models folder; install with --force "
                               "to replace it", param="files")
        elif others:
            raise Conflict(f"{spec.filename} is named by model {', '.join(sorted(others))}; an "
                           "install may not write another model's files", param="files")
    for template in plan.templates:
        target = models_path / template
        others = users.get(target.resolve(), set())
        if target.exists() and others and target.read_text(errors="replace") != plan.templates[template]:
            raise Conflict(f"template {template} belongs to model {', '.join(sorted(others))}",
                           param="id")

def check_disk(plan: Plan, models_path: Path, downloader: Downloader) -> None:
    """Refuse a plan whose downloads do not fit the free disk space (and the reserve)."""
    need = 0
    for spec in plan.files:
        if spec.skip or spec.size is None:
            continue
        partial = partial_path(spec.target)
        have = partial.stat().st_size if partial.exists() else 0
        need += max(0, spec.size - have)
    if not need:
        return
    models_path.mkdir(parents=True, exist_ok=True)
    free = downloader.free_bytes(models_path)
    if free < need + DISK_RESERVE:
        raise InsufficientStorage(
            f"not enough disk space to install {plan.name}: {need} bytes needed (plus a "
            f"{format_size(DISK_RESERVE)} reserve), {free} bytes free in {models_path}")

# Committing ---------------------------------------------------------------------------
