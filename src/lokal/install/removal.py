"""Removing an installed model without touching what other models still use."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from lokal.errors import Conflict, NotFound
from lokal.install.conflicts import file_users
from lokal.install.jobs import Job
from lokal.install.records import read_record, record_path
from lokal.models.catalog import scan_models
from lokal.transfer.downloader import partial_path
from lokal.transfer.paths import UnsafePath, confine

log = logging.getLogger(__name__)


def remove_model(name: str, models_path: Path, config_file: Path | None) -> Job:
    """Delete a model's config and the files its install record (or, without one, its config)
    names, except files another model still uses; a finished deletion `Job` says what was
    removed and what kept (the caller holds the commit lock)."""
    entries = {e.name: e for e in scan_models(models_path, config_file)}
    entry = entries.get(name)
    record = read_record(models_path, name)
    if entry is None and record is None:
        raise NotFound(f"no model named {name!r} in the models folder", param="name")
    root = models_path.resolve()
    candidates: list[str] = []
    config_rel: str | None = None
    if entry is not None and entry.source is not None:
        source = entry.source.resolve()
        if root not in source.parents:
            raise Conflict(f"model {name!r} is defined in {entry.source}, outside the models "
                           "folder; edit that file by hand", param="name")
        if source.suffix.lower() in (".yaml", ".yml"):
            if sum(1 for e in entries.values() if e.source == entry.source) > 1:
                raise Conflict(f"{entry.source.name} defines several models; edit it by hand",
                               param="name")
            config_rel = source.relative_to(root).as_posix()
        else:
            candidates.append(source.relative_to(root).as_posix())  # a loose model file
    if record is not None:
        candidates += [f for f in record.get("files", []) + record.get("templates", [])
                       if isinstance(f, str)]
    elif entry is not None and entry.source is not None and config_rel is not None:
        paths = [entry.model_path] + [d.path for d in entry.downloads]
        for path in paths:
            if path is not None and path.is_file() and root in path.resolve().parents:
                candidates.append(path.resolve().relative_to(root).as_posix())
    users = file_users(models_path, config_file, exclude=name)
    job = Job(name, name=name, deletion=True)
    for rel in dict.fromkeys(candidates):
        try:
            target = confine(models_path, rel, what="recorded file", write=True)
        except UnsafePath as exc:
            job.kept.append(f"{rel} ({exc.rule})")
            continue
        if target.resolve() in users:
            job.kept.append(f"{rel} (used by {', '.join(sorted(users[target.resolve()]))})")
            continue
        if target.is_file():
            target.unlink()
            job.removed.append(rel)
            prune_empty(target.parent, root)
        partial_path(target).unlink(missing_ok=True)
    if config_rel is not None:
        (root / config_rel).unlink(missing_ok=True)
        job.removed.append(config_rel)
    record_path(models_path, name).unlink(missing_ok=True)
    job.status, job.message, job.finished_at = "done", "completed", time.time()
    log.info("removed model %s: %s", name, ", ".join(job.removed) or "nothing")
    return job


def prune_empty(folder: Path, root: Path) -> None:
    """Remove folder and its parents up to root while they are empty."""
    while folder.resolve() != root and root in folder.resolve().parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent
