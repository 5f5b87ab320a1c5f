"""Ollama's model management: /api/pull, /api/delete, /api/copy, behind the admin guard.

* pull: an install job (`lokal.install`). The model name is an install reference: a
  gallery entry (`qwen2.5-0.5b-instruct`, `:latest` implied), `GALLERY@NAME`,
  `hf://owner/repo:QUANT`, or a URL. Pulling what is here already (the model by its
  name, or a reference installed before) answers `success`, as Ollama's up-to-date
  pull does; a source that cannot be reached is a 502. Its progress streams as Ollama's status lines:
  `pulling manifest` while planning, `pulling <file>` with `digest` (the file's name:
  lokal has no content-addressed layers), `total` and `completed` per file,
  `verifying sha256 digest` and `writing manifest` while the files are verified and
  committed, `success` at the end. Planning errors (unknown entry 404, bad reference
  400, no room 507) are the HTTP answer; later ones a line `{"error": ...}`. A client
  that goes away cancels its pull; pulling again resumes the partial files. A model
  that is already here answers `success` at once, as an up-to-date pull does.
* delete: unloads the model and removes its config and the files no other model
  uses (`InstallManager.remove`).
* copy: writes `<destination>.yaml`, a config with the source's settings under the
  new name (an alias: the model file is shared, not copied).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from lokal.api.admin import require_admin
import lokal.api.ollama.models as catalog
from lokal.api.ollama.protocol import CopyRequest, DeleteRequest, PullRequest
from lokal.api.ollama.routes import read_body
from lokal.api.respond import ndjson
from lokal.errors import Conflict, LokalError
from lokal.install.conflicts import ModelExists
from lokal.install.jobs import Job
from lokal.install.manager import InstallManager
from lokal.transfer.paths import check_model_name

router = APIRouter(dependencies=[Depends(require_admin)])

#: How long a pull waits for planning before it starts answering anyway.
PLAN_WAIT = 60.0


def _installer(request: Request) -> InstallManager:
    return request.app.state.installer


def _reference(model: str) -> str:
    """An Ollama model name as an install reference: `:latest` is implied."""
    return model[: -len(catalog.LATEST)] if model.endswith(catalog.LATEST) else model


def _progress(event: Any) -> dict[str, Any] | None:
    """One install event as an Ollama progress object (None: nothing new to say)."""
    if event.status == "planning":
        return {"status": "pulling manifest"}
    if event.status == "downloading" and event.file_name:
        line: dict[str, Any] = {"status": f"pulling {event.file_name}", "digest": event.file_name}
        if event.total:
            line["total"] = event.total
        if event.completed:
            line["completed"] = event.completed
        return line
    if event.status == "installing":
        return {"status": "verifying sha256 digest"}
    if event.status == "done":
        return None  # "writing manifest" and "success" follow
    return None


async def _lines(job: Job) -> AsyncIterator[bytes]:
    last: dict[str, Any] | None = {"status": "pulling manifest"}
    try:
        yield ndjson(last)  # planning is the manifest, whether or not it is over yet
        async for event in job.events():
            if event.status in ("error", "cancelled"):
                message = event.error or event.message or "the pull was cancelled"
                yield ndjson({"error": message})
                return
            line = _progress(event)
            if line is not None and line != last and line["status"] != "pulling manifest":
                yield ndjson(line)
                last = line
            if event.status == "done":
                yield ndjson({"status": "writing manifest"}) + ndjson({"status": "success"})
                return
    finally:
        if not job.processed:  # the client went away: stop; a new pull resumes
            job.cancel()


def _up_to_date(stream: bool) -> Any:
    """What a pull of a model that is here already answers."""
    if not stream:
        return {"status": "success"}
    return StreamingResponse(iter([ndjson({"status": "pulling manifest"}), ndjson({"status": "success"})]),
                             media_type="application/x-ndjson")


@router.post("/pull", summary="Ollama: install a model (progress as NDJSON)")
async def pull(request: Request) -> Any:
    body = await read_body(request, PullRequest)
    try:
        catalog.resolve(request.app.state.registry, body.target)
    except LokalError:
        pass
    else:  # already here: as an up-to-date pull
        return _up_to_date(body.stream)
    job = _installer(request).start(_reference(body.target))
    try:
        await job.planned(timeout=PLAN_WAIT)  # errors found while planning: the HTTP answer
    except ModelExists as exc:
        if exc.same_source:  # pulled before (a URL's model goes by its file's name)
            return _up_to_date(body.stream)
        raise
    if not body.stream:
        await job.wait()
        if job.error is not None:
            raise job.error
        if job.cancelled:
            raise Conflict("the pull was cancelled")
        return {"status": "success"}
    return StreamingResponse(_lines(job), media_type="application/x-ndjson")


@router.delete("/delete", summary="Ollama: delete a model")
async def delete(request: Request) -> Response:
    body = await read_body(request, DeleteRequest)
    registry = request.app.state.registry
    entry = catalog.resolve(registry, body.target)
    await registry.unload(entry.name)
    await asyncio.to_thread(_installer(request).remove, entry.name)
    return Response(status_code=200)


def _alias_config(entry: Any, destination: str, models_path: Path) -> dict[str, Any]:
    """The source's config under the destination's name (a loose file: a config naming it)."""
    source = entry.source
    if source is not None and source.suffix.lower() in (".yaml", ".yml"):
        documents = yaml.safe_load(source.read_text(encoding="utf-8"))
        for document in documents if isinstance(documents, list) else [documents]:
            if isinstance(document, dict) and document.get("name") == entry.name:
                return {**document, "name": destination}
    if entry.model_path is None:
        raise Conflict(f"model '{entry.name}' has no file to copy")
    relative = entry.model_path.resolve().relative_to(models_path.resolve()).as_posix()
    return {"name": destination, "parameters": {"model": relative}}


def _write_new(path: Path, text: str) -> None:
    """Write path whole or not at all, never over an existing file."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".copy-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.link(temp, path)  # fails if path exists
    except FileExistsError:
        raise Conflict(f"a config named {path.name} is already in the models folder") from None
    finally:
        os.unlink(temp)


@router.post("/copy", summary="Ollama: another name for a model (an alias config)")
async def copy(request: Request) -> Response:
    body = await read_body(request, CopyRequest)
    registry = request.app.state.registry
    entry = catalog.resolve(registry, body.source)
    destination = check_model_name(_reference(body.destination))
    if any(e.name == destination for e in registry.entries):
        raise Conflict(f"model '{body.destination}' already exists", param="destination")
    models_path: Path = registry.models_path
    config = _alias_config(entry, destination, models_path)
    text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    await asyncio.to_thread(_write_new, models_path / f"{destination}.yaml", text)
    registry.scan()
    return Response(status_code=200)
