"""What an install leaves behind and how it is written: the files put in place, the
templates, the YAML config and the install record (`.lokal/installs/NAME.json`, which a
removal trusts for what to delete), each written atomically."""

from __future__ import annotations

import json
import os
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

import yaml

from lokal.install.planning import Plan
from lokal.transfer.downloader import Downloader
from lokal.transfer.paths import STATE_DIR, UnsafePath, confine


def records_folder(models_path: Path) -> Path:
    return models_path / STATE_DIR / "installs"


def record_path(models_path: Path, name: str) -> Path:
    return records_folder(models_path) / f"{name}.json"


def read_records(models_path: Path) -> list[dict[str, Any]]:
    """Every readable install record of a models folder (unreadable ones are passed over)."""
    folder = records_folder(models_path)
    out = []
    if folder.is_dir():
        for path in sorted(folder.glob("*.json")):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict):
                out.append(data)
    return out


def read_record(models_path: Path, name: str) -> dict[str, Any] | None:
    path = record_path(models_path, name)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def commit(plan: Plan, models_path: Path, downloader: Downloader) -> None:
    """Put a downloaded plan in place: its files, templates, config and install record (the
    caller holds the commit lock)."""
    for spec in plan.files:
        if not spec.skip:
            downloader.place(spec.target)
    for template, content in plan.templates.items():
        write_atomic(confine(models_path, template, what="template name", write=True),
                     content.encode())
    text = yaml.safe_dump(plan.config, sort_keys=False, allow_unicode=True)
    write_atomic(plan.config_path, text.encode())
    record = {"name": plan.name, "config": plan.config_path.name, "source": plan.source,
              "files": [s.filename for s in plan.files], "templates": sorted(plan.templates),
              "installed_at": int(time.time())}
    write_atomic(record_path(models_path, plan.name), json.dumps(record, indent=2).encode())


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        raise UnsafePath(path.name, "the target is a symlink")
    tmp = path.parent / f".{path.name}.{uuidlib.uuid4().hex[:8]}.tmp"
    try:
        with tmp.open("wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
