"""The install job system: one for the CLI, LocalAI's `/models/apply`, the web UI and
Ollama's `/api/pull`.

Python API (everything runs on the caller's asyncio loop; downloads run in threads)::

    manager = InstallManager.from_settings(settings, on_change=registry.scan)
    job = manager.start("qwen2.5-0.5b-instruct", name="chat")   # returns at once
    await job.planned()          # optional: raises the LokalError that stopped planning
    async for event in job.events():   # ProgressEvent: file name, sizes, status text
        print(event.status, event.file_name, event.completed, event.total)
    job.cancel()                 # from anywhere on the loop; the partial file is kept
    manager.get(job.uuid)        # a job by id (404 if unknown)
    manager.remove("chat")       # delete an installed model (a finished deletion Job)

A job first *plans* (parses the reference, reads galleries and configs, checks every
file name, URL, conflict and the free disk space), then downloads each file to a
hidden partial file, and only when all are whole and verified *commits*: renames the
files into place, writes templates, the YAML config and an install record
(`.lokal/installs/NAME.json`, which `remove()` trusts for what to delete). A failure
or cancel before the commit leaves the models folder as it was (partials are hidden
and resumed by the next attempt). Gallery and config content is untrusted: it cannot
name files outside the models folder, overwrite another model's files or config,
or set options that fetch or execute on their own.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import re
import threading
import time
import uuid as uuidlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml
from pydantic import ValidationError

from lokal.errors import (BadRequest, Conflict, InsufficientStorage, LokalError, NotFound,
                          ServerError)
from lokal.install import diffusers_repo, localai_gallery, references
from lokal.transfer.downloader import (DISK_RESERVE, Cancelled, Downloader, file_sha256, human,
                                      partial_path)
from lokal.install.gallery import (Entry, Galleries, GallerySource, load_yaml, parse_galleries,
                                   read_source)
from lokal.transfer.netguard import OutboundPolicy, URLRefused
from lokal.transfer.paths import STATE_DIR, UnsafePath, check_model_name, check_relative, confine
from lokal.models.config import BACKEND_ALIASES, ModelConfig
from lokal.models.catalog import scan_models

log = logging.getLogger(__name__)

#: Config keys gallery content may not set: options that make lokal fetch or execute
#: something on its own. (A future remote-image option must be listed here.)
FORBIDDEN_KEYS = frozenset({
    "download_files_on_start", "allow_remote_images", "fetch_remote_images", "remote_images",
    "image_url_fetch", "external_backend", "backend_uri", "backend_path", "grpc", "pre_load_hook",
})
#: Config fields that name files in the models folder.
FILE_FIELDS = ("mmproj", "draft_model", "tokenizer")
_SHA = re.compile(r"^[0-9a-f]{64}$")
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.I)
CONFIG_LIMIT = 1 << 20


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a job, as its `events()` yield them.

    status: planning, downloading, installing, done, error or cancelled (the last
    three end the stream). file_name/total/completed describe the file being
    downloaded (total None when unknown); progress is the whole job in percent."""

    job: str
    status: str
    message: str
    file_name: str | None = None
    total: int | None = None
    completed: int | None = None
    file_index: int = 0
    file_count: int = 0
    progress: float = 0.0
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in ("done", "error", "cancelled")


@dataclass
class FileSpec:
    filename: str
    url: str
    sha256: str | None
    size: int | None
    target: Path
    skip: bool = False  # already in place (verified or shared)


@dataclass
class Plan:
    name: str
    config: dict[str, Any]
    config_path: Path
    files: list[FileSpec]
    templates: dict[str, str]  # relative .tmpl name -> content
    source: str
    replace: bool = False


class Job:
    """One install (or deletion). Create with `InstallManager.start()`."""

    def __init__(self, ref: str, *, name: str | None = None, deletion: bool = False) -> None:
        self.uuid = str(uuidlib.uuid4())
        self.ref = ref
        self.requested_name = name
        self.name: str | None = name  # the model name, once planned
        self.deletion = deletion
        self.status = "planning"
        self.message = "planning"
        self.error: LokalError | None = None
        self.created = time.time()
        self.finished_at: float | None = None
        self.file_name: str | None = None
        self.file_total: int | None = None
        self.file_completed: int | None = None
        self.file_index = 0
        self.file_count = 0
        self.bytes_total = 0
        self.bytes_done = 0
        self.removed: list[str] = []
        self.kept: list[str] = []
        self.variant: str | None = None  # the build of a gallery entry asked for (LocalAI's `variant`)
        self._cancel = threading.Event()
        self._planned = asyncio.Event() if not deletion else None
        self._done = asyncio.Event() if not deletion else None
        self._queues: list[asyncio.Queue[ProgressEvent]] = []
        self._file_base = 0
        self.task: asyncio.Task[None] | None = None

    # Reading ----------------------------------------------------------------------

    @property
    def processed(self) -> bool:
        return self.status in ("done", "error", "cancelled")

    @property
    def cancelled(self) -> bool:
        return self.status == "cancelled"

    @property
    def progress(self) -> float:
        if self.status == "done":
            return 100.0
        if self.bytes_total:
            return round(min(100.0, 100.0 * self.bytes_done / self.bytes_total), 2)
        return 0.0

    def event(self) -> ProgressEvent:
        return ProgressEvent(job=self.uuid, status=self.status, message=self.message,
                             file_name=self.file_name, total=self.file_total,
                             completed=self.file_completed, file_index=self.file_index,
                             file_count=self.file_count, progress=self.progress,
                             error=self.error.message if self.error else None)

    def status_dict(self) -> dict[str, Any]:
        """The job as LocalAI's `GET /models/jobs/{uuid}` answers it (plus lokal's fields)."""
        return {
            "deletion": self.deletion,
            "file_name": self.file_name or "",
            "error": self.error.message if self.error else None,
            "processed": self.processed,
            "message": self.message,
            "progress": self.progress,
            "file_size": human(self.file_total) if self.file_total is not None else "",
            "downloaded_size": human(self.file_completed) if self.file_completed is not None else "",
            "gallery_element_name": self.name or "",
            "cancelled": self.cancelled,
            "cancellable": not self.processed,
            # lokal's additions: exact numbers and the status kind.
            "uuid": self.uuid,
            "status": self.status,
            "name": self.name,
            "error_status": self.error.status if self.error else None,
            "total_bytes": self.bytes_total or None,
            "downloaded_bytes": self.bytes_done,
        }

    # Waiting ------------------------------------------------------------------------

    async def planned(self, timeout: float | None = None) -> None:
        """Wait until planning is over; raise the error that ended it there, if any."""
        assert self._planned is not None
        try:
            await asyncio.wait_for(self._planned.wait(), timeout)
        except TimeoutError:
            return
        if self.error is not None and self.status == "error" and self.file_count == 0:
            raise self.error

    async def wait(self) -> Job:
        """Wait until the job has ended (done, error or cancelled)."""
        if self._done is not None:
            await self._done.wait()
        return self

    async def events(self) -> AsyncIterator[ProgressEvent]:
        """The current state, then every change until the job ends."""
        queue: asyncio.Queue[ProgressEvent] = asyncio.Queue()
        self._queues.append(queue)
        try:
            current = self.event()
            yield current
            if current.finished:
                return
            while True:
                event = await queue.get()
                yield event
                if event.finished:
                    return
        finally:
            self._queues.remove(queue)

    def cancel(self) -> bool:
        """Ask the job to stop; False if it has already ended. The partial files stay
        (hidden) so that installing again resumes them."""
        if self.processed:
            return False
        self._cancel.set()
        if self.task is not None and self.status == "planning":
            self.task.cancel()
        return True

    # Updating (on the loop) ---------------------------------------------------------

    def _emit(self) -> None:
        event = self.event()
        for queue in self._queues:
            queue.put_nowait(event)

    def _set(self, status: str, message: str) -> None:
        self.status, self.message = status, message
        self._emit()

    def _file(self, index: int, spec: FileSpec) -> None:
        self.file_index, self.file_name = index, spec.filename
        self.file_total, self.file_completed = spec.size, 0
        self._set("downloading", f"downloading {spec.filename}")

    def _progress(self, completed: int, total: int | None) -> None:
        if self.processed:
            return
        self.file_completed, self.file_total = completed, total
        self.bytes_done = self._file_base + completed
        self._emit()

    def _end(self, status: str, message: str, error: LokalError | None = None) -> None:
        self.error = error
        self.finished_at = time.time()
        self._set(status, message)
        if self._planned is not None:
            self._planned.set()
        if self._done is not None:
            self._done.set()


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class ModelExists(Conflict):
    """An install of a name that is taken; `same_source`: the model there was installed from
    the same reference (an Ollama pull of it is already done)."""

    def __init__(self, name: str, *, same_source: bool) -> None:
        super().__init__(f"a model named {name!r} exists already; install with --force "
                         '(HTTP: "force": true) to replace it, or choose another --name', param="name")
        self.name = name
        self.same_source = same_source


class InstallManager:
    """Plans, runs and records installs into one models folder."""

    def __init__(self, models_path: Path, policy: OutboundPolicy,
                 galleries: list[GallerySource] | None = None, *,
                 on_change: Callable[[], Any] | None = None, config_file: Path | None = None,
                 downloader: Downloader | None = None, allow_file: bool = False) -> None:
        self.models_path = Path(models_path)
        self.policy = policy
        self.galleries = Galleries(galleries or parse_galleries(None), policy)
        self.downloader = downloader or Downloader(policy)
        self.on_change = on_change
        self.config_file = config_file
        self.allow_file = allow_file
        self.jobs: dict[str, Job] = {}
        self._claims: dict[str, Job] = {}
        self._claim_lock = threading.Lock()
        self._commit_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Any, *, on_change: Callable[[], Any] | None = None,
                      allow_file: bool = False, downloader: Downloader | None = None) -> InstallManager:
        """A manager for a server (or a CLI run) from its settings; `downloader`: one shared
        with the server's first-use downloads (one transfer per file)."""
        return cls(settings.models_path, policy_from_settings(settings),
                   parse_galleries(settings.galleries), on_change=on_change,
                   config_file=settings.config_file, allow_file=allow_file, downloader=downloader)

    # Jobs ---------------------------------------------------------------------------

    def start(self, ref: str, name: str | None = None, force: bool = False,
              overrides: dict[str, Any] | None = None,
              files: list[dict[str, Any]] | None = None, variant: str | None = None) -> Job:
        """Start installing ref (see `lokal.install.references`) as name. Returns the job at
        once; planning errors end it (and `await job.planned()` raises them)."""
        if overrides is not None and not isinstance(overrides, dict):
            raise BadRequest("overrides must be a mapping of config fields", param="overrides")
        if files is not None and not isinstance(files, list):
            raise BadRequest("files must be a list of {filename, uri, sha256}", param="files")
        job = Job(ref, name=name)
        job.variant = variant
        self.jobs[job.uuid] = job
        job.task = asyncio.get_running_loop().create_task(
            self._run(job, ref, name, force, overrides or {}, files or []), name=f"install {job.uuid}")
        return job

    def get(self, uuid: str) -> Job:
        try:
            return self.jobs[uuid]
        except KeyError:
            raise NotFound(f"no job {uuid!r} (jobs are kept until the server restarts)",
                           param="uuid") from None

    async def _run(self, job: Job, ref: str, name: str | None, force: bool,
                   overrides: dict[str, Any], files: list[dict[str, Any]]) -> None:
        plan: Plan | None = None
        try:
            plan = await asyncio.to_thread(self._plan, job, ref, name, force, overrides, files)
            job.name = plan.name
            job.file_count = len(plan.files)
            job.bytes_total = sum(s.size or 0 for s in plan.files)
            assert job._planned is not None
            job._planned.set()
            loop = asyncio.get_running_loop()
            for index, spec in enumerate(plan.files, 1):
                job._file(index, spec)
                if spec.skip:
                    job._progress(spec.size or 0, spec.size)
                else:
                    def report(done: int, total: int | None, _job: Job = job) -> None:
                        loop.call_soon_threadsafe(_job._progress, done, total)

                    await asyncio.to_thread(self.downloader.fetch, spec.url, spec.target,
                                            sha256=spec.sha256, size=spec.size, on_progress=report,
                                            cancel=job._cancel, place=False)
                    await asyncio.sleep(0)  # let the last progress report land
                job._file_base += spec.size or (job.file_total or 0)
                if not spec.size and job.file_total:
                    job.bytes_total += job.file_total
            if job._cancel.is_set():
                raise Cancelled(plan.name)
            job._set("installing", "installing")
            await asyncio.to_thread(self._commit, plan)
            if self.on_change is not None:
                self.on_change()
            job._end("done", "completed")
            log.info("installed %s (%s)", plan.name, ref)
        except (Cancelled, asyncio.CancelledError):
            job._end("cancelled", "cancelled; installing again resumes the download")
            log.info("install of %s cancelled", ref)
        except LokalError as exc:
            job._end("error", f"error: {exc.message}", exc)
            log.warning("install of %s failed: %s", ref, exc.message)
        except Exception as exc:  # a bug: the job says so, the server keeps serving
            log.error("install of %s failed", ref, exc_info=exc)
            job._end("error", "error: internal error (see the server log)",
                     ServerError(f"installing {ref} failed: {type(exc).__name__}: {exc}"))
        finally:
            if plan is not None:
                with self._claim_lock:
                    if self._claims.get(plan.name) is job:
                        del self._claims[plan.name]

    # Planning (in a thread) -----------------------------------------------------------

    def _plan(self, job: Job, ref_text: str, name: str | None, force: bool,
              overrides: dict[str, Any], extra_files: list[dict[str, Any]]) -> Plan:
        ref = references.parse(ref_text, allow_file=self.allow_file)
        doc, default_name = self._document(ref, job.variant)
        if name is not None:
            name = check_model_name(name)
        else:
            name = check_model_name(default_name)
        config, file_items, prompt_templates = self._split(doc, ref.text)
        config = _deep_merge(config, overrides)
        file_items = file_items + list(extra_files)
        config["name"] = name
        file_items = self._localai_rules(config, file_items, name)
        files = self._file_specs(file_items, config)
        templates = self._templates(prompt_templates)
        self._check_config(config, files, templates)
        config_path = confine(self.models_path, f"{name}.yaml", what="config name", write=True,
                              allow_config=True)
        plan = Plan(name=name, config=config, config_path=config_path, files=files,
                    templates=templates, source=ref.text)
        with self._claim_lock:
            running = self._claims.get(name)
            if running is not None and not running.processed:
                raise Conflict(f"model {name!r} is being installed by job {running.uuid}; wait for it "
                               "or cancel it", param="name")
            self._check_conflicts(plan, force)
            self._check_disk(plan)
            self._claims[name] = job
        if job._cancel.is_set():
            raise Cancelled(name)
        return plan

    def _localai_rules(self, config: dict[str, Any], items: list[Any], name: str) -> list[Any]:
        """LocalAI's gallery as lokal plans it (see `localai_gallery`): refused with the reason
        before any download, or a Hugging Face repo's files added where the config names one."""
        why = localai_gallery.refusal(config, f"model {name!r}")
        if why is not None:
            raise localai_gallery.NotServable(f"cannot install {name!r}: {why}")
        repo = localai_gallery.diffusers_repo_of(config, items)
        if repo is not None:  # LocalAI's diffusers backend names a hub repo: its folder is installed
            files = self._hf_listing(repo)
            if not diffusers_repo.is_diffusers_repo(files):
                raise localai_gallery.NotServable(
                    f"cannot install {name!r}: Hugging Face repo {repo} has no model_index.json (lokal "
                    "runs diffusers pipelines from a diffusers folder)")
            document, _ = diffusers_repo.document(
                repo, files, lambda path: self.policy.fetch_bytes(
                    self.policy.map(f"huggingface://{repo}/{path}"), what=f"{path} of {repo}"),
                lambda path, filename: {"filename": f"{name}/{path}", "uri": f"huggingface://{repo}/{path}",
                                        **_hf_meta(files[path])})
            config["parameters"] = dict(config.get("parameters") or {}, model=name)
            return items + document["files"]
        repo = localai_gallery.hf_repo(config, items)
        if repo is None:
            return items
        repo_items = localai_gallery.repo_files(repo, self._hf_listing(repo), name, _hf_meta)
        config["parameters"] = dict(config.get("parameters") or {}, model=name)
        return items + repo_items

    def _document(self, ref: references.Reference, variant: str | None = None) -> tuple[dict[str, Any], str]:
        """The install document (LocalAI gallery-model form) and the default name."""
        if ref.kind == "gallery":
            entry = self.galleries.find(ref.name or "", ref.gallery)
            chosen = localai_gallery.choose_variant(entry.raw, variant, f"gallery entry {entry.name!r}")
            if chosen is not None:
                build = self.galleries.find(chosen, entry.gallery.name)
                if build.raw.get("variants"):
                    raise BadRequest(f"variant {chosen!r} of {entry.name!r} declares variants of its own; "
                                     "the gallery is inconsistent", param="variant")
                return self._entry_document(build), entry.name
            return self._entry_document(entry), entry.name
        if variant is not None:
            raise BadRequest("a variant can be named only for a gallery entry", param="variant")
        if ref.kind == "config":
            assert ref.url is not None
            what = f"config {ref.url}"
            raw = load_yaml(read_source(self.policy, ref.url, what=what, allow_file=self.allow_file,
                                        limit=CONFIG_LIMIT), what)
            if not isinstance(raw, dict):
                raise BadRequest(f"{what} is not a YAML mapping", param="url")
            stem = unquote(urlsplit(ref.url).path).rsplit("/", 1)[-1].rsplit(".", 1)[0]
            default = raw.get("name") if isinstance(raw.get("name"), str) else stem
            return raw, str(default)
        if ref.kind == "hf_repo":
            return self._hf_repo_document(ref)
        if ref.kind in ("hf_file", "url"):
            uri = ref.text if ref.kind == "hf_file" else str(ref.url)
            filename = unquote(urlsplit(self.policy.map(uri)).path).rsplit("/", 1)[-1]
            stem = filename[:-5] if filename.lower().endswith(".gguf") else filename
            item: dict[str, Any] = {"filename": filename, "uri": uri}
            if ref.kind == "hf_file":  # the hub's hash and size, when it lists them
                try:
                    info = self._hf_listing(str(ref.repo)).get(str(ref.file))
                except LokalError:
                    info = None
                if info is not None:
                    item.update(_hf_meta(info))
            return {"config_file": {"parameters": {"model": filename}}, "files": [item]}, stem
        raise BadRequest(f"cannot install {ref.text!r}", param="id")

    def _hf_repo_document(self, ref: references.Reference) -> tuple[dict[str, Any], str]:
        """`hf://owner/repo[:QUANT]`: the GGUF carrying QUANT (default Q4_K_M, else the first
        GGUF), all parts of a split GGUF, and a matching mmproj when the repo has one."""
        repo = str(ref.repo)
        files = self._hf_listing(repo)
        ggufs = sorted(p for p in files if p.lower().endswith(".gguf")
                       and not p.rsplit("/", 1)[-1].lower().startswith("mmproj"))
        if not ggufs and diffusers_repo.is_diffusers_repo(files):  # an image model's folder
            return diffusers_repo.document(
                repo, files, lambda path: self.policy.fetch_bytes(
                    self.policy.map(f"huggingface://{repo}/{path}"), what=f"{path} of {repo}"),
                lambda path, filename: {"filename": filename, "uri": f"huggingface://{repo}/{path}",
                                        **_hf_meta(files[path])})
        if not ggufs:
            raise NotFound(f"Hugging Face repo {repo} has no GGUF files", param="id")
        quant = (ref.quant or references.DEFAULT_QUANT).lower()
        matching = [p for p in ggufs if quant in p.rsplit("/", 1)[-1].lower()]
        if not matching and ref.quant:
            raise NotFound(f"no GGUF in {repo} carries {ref.quant!r}; it has: "
                           + ", ".join(p.rsplit("/", 1)[-1] for p in ggufs), param="id")
        chosen = (matching or ggufs)[0]
        parts = [chosen]
        split = _SPLIT.search(chosen)
        if split:
            prefix = chosen[: split.start()]
            parts = [p for p in ggufs if p.startswith(prefix) and _SPLIT.search(p)
                     and _SPLIT.search(p).group(2) == split.group(2)]  # type: ignore[union-attr]
            chosen = parts[0]
        projectors = sorted(p for p in files if p.rsplit("/", 1)[-1].lower().startswith("mmproj")
                            and p.lower().endswith(".gguf"))
        projector = next((p for p in projectors if quant in p.lower()), None) \
            or next((p for p in projectors if "f16" in p.lower()), None) \
            or (projectors[0] if projectors else None)

        def item(path: str) -> dict[str, Any]:
            return {"filename": path.rsplit("/", 1)[-1], "uri": f"huggingface://{repo}/{path}",
                    **_hf_meta(files[path])}

        config: dict[str, Any] = {"backend": "llama-cpp",
                                  "parameters": {"model": chosen.rsplit("/", 1)[-1]}}
        wanted = [item(p) for p in parts]
        if projector is not None:
            config["mmproj"] = projector.rsplit("/", 1)[-1]
            wanted.append(item(projector))
        default = repo.rsplit("/", 1)[-1].lower()
        default = re.sub(r"[-_.]gguf$", "", default)
        return {"config_file": config, "files": wanted}, default

    def _hf_listing(self, repo: str) -> dict[str, dict[str, Any]]:
        """The files of a Hugging Face repo (path -> the hub's entry), from its tree API."""
        url = f"{self.policy.hf_endpoint}/api/models/{repo}/tree/main?recursive=true"
        what = f"the file list of Hugging Face repo {repo}"
        try:
            listing = json.loads(self.policy.fetch_bytes(url, what=what))
        except ValueError:
            raise BadRequest(f"{what} is not JSON", param="id") from None
        except LokalError as exc:
            if "HTTP 404" in exc.message or "HTTP 401" in exc.message:
                raise NotFound(f"no Hugging Face repo {repo!r} (or it is private: set HF_TOKEN)",
                               param="id") from None
            raise
        if not isinstance(listing, list):
            raise BadRequest(f"{what} is not a list", param="id")
        return {str(i["path"]): i for i in listing
                if isinstance(i, dict) and i.get("type", "file") == "file" and isinstance(i.get("path"), str)}

    def _entry_document(self, entry: Entry) -> dict[str, Any]:
        raw = entry.raw
        what = f"gallery {entry.gallery.name!r} entry {entry.name!r}"
        if isinstance(raw.get("url"), str) and raw["url"].strip():
            url = raw["url"].strip()
            base = load_yaml(read_source(self.policy, url, what=f"{what} base config {url}",
                                         allow_file=entry.gallery.url.startswith(("file:", "builtin")),
                                         limit=CONFIG_LIMIT), f"{what} base config {url}")
            if base is None:
                base = {}
            if not isinstance(base, dict):
                raise BadRequest(f"{what}: its base config is not a YAML mapping", param="id")
        else:
            base = {}
        doc = dict(base)
        if "config_file" in raw:
            doc["config_file"] = raw["config_file"]
        config, files, prompts = self._split(doc, what)
        if isinstance(raw.get("overrides"), dict):
            config = _deep_merge(config, raw["overrides"])
        elif raw.get("overrides") is not None:
            raise BadRequest(f"{what}: overrides must be a mapping", param="id")
        entry_files = raw.get("files") or []
        if not isinstance(entry_files, list):
            raise BadRequest(f"{what}: files must be a list", param="id")
        return {"config_file": config, "files": files + entry_files, "prompt_templates": prompts}

    def _split(self, doc: dict[str, Any], what: str) -> tuple[dict[str, Any], list[Any], list[Any]]:
        """(config, files, prompt_templates) of a LocalAI gallery-model document, or of a
        plain model config (its download_files become the files)."""
        if "config_file" in doc:
            config = doc["config_file"]
            if isinstance(config, str):
                config = load_yaml(config.encode(), f"{what}: config_file")
            config = config or {}
            files = doc.get("files") or []
            prompts = doc.get("prompt_templates") or []
        else:
            config = {k: v for k, v in doc.items()
                      if k not in ("files", "prompt_templates", "description", "license", "urls",
                                   "icon", "tags")}
            files = list(doc.get("files") or [])
            prompts = doc.get("prompt_templates") or []
        if not isinstance(config, dict):
            raise BadRequest(f"{what}: config_file must be a mapping of config fields", param="id")
        if not isinstance(files, list) or not isinstance(prompts, list):
            raise BadRequest(f"{what}: files and prompt_templates must be lists", param="id")
        config = copy.deepcopy(config)
        downloads = config.pop("download_files", None) or []
        if not isinstance(downloads, list):
            raise BadRequest(f"{what}: download_files must be a list", param="id")
        return config, list(files) + downloads, prompts

    def _file_specs(self, items: list[Any], config: dict[str, Any]) -> list[FileSpec]:
        params = config.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise BadRequest("parameters must be a mapping", param="overrides")
        model = (params or {}).get("model")
        if isinstance(model, str) and ("://" in model or model.startswith("github:")):
            filename = unquote(urlsplit(self.policy.map(model)).path).rsplit("/", 1)[-1]
            items = items + [{"filename": filename, "uri": model}]
            config["parameters"] = dict(params or {}, model=filename)
        specs: dict[str, FileSpec] = {}
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("filename"), str) \
                    or not isinstance(item.get("uri"), str):
                raise BadRequest(f"each file needs a filename and a uri: {str(item)[:200]}", param="files")
            filename = item["filename"].strip()
            target = confine(self.models_path, filename, write=True)
            url = self.policy.map(item["uri"])
            self.policy.check(url)  # scheme, host, address rules now, before any byte
            sha = item.get("sha256")
            if isinstance(sha, int) and not isinstance(sha, bool):
                sha = str(sha).zfill(64)
            if sha is not None and sha != "":
                sha = str(sha).strip().lower()
                if not _SHA.match(sha):
                    raise BadRequest(f"{filename}: sha256 must be 64 hexadecimal digits", param="files")
            else:
                sha = None
            size = item.get("size")
            if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
                raise BadRequest(f"{filename}: size must be a number of bytes", param="files")
            if filename in specs:
                if specs[filename].url != url:
                    raise BadRequest(f"{filename} is named twice with different URIs", param="files")
                continue
            specs[filename] = FileSpec(filename, url, sha, size, target)
        for spec in specs.values():
            if spec.size is None:
                spec.size = self._remote_size(spec.url)
            cap = self.policy.max_bytes
            if cap is not None and spec.size is not None and spec.size > cap:
                raise URLRefused(spec.url, f"the file is {human(spec.size)}, over the size cap of "
                                           f"{human(cap)} (MAX_DOWNLOAD_SIZE)")
        return list(specs.values())

    def _remote_size(self, url: str) -> int | None:
        """The size a HEAD request announces (best effort; the download checks again)."""
        try:
            with self.policy.client() as client, self.policy.open(client, url, method="HEAD") as response:
                length = response.headers.get("content-length")
                if response.status_code == 200 and length and length.isdigit():
                    return int(length)
        except URLRefused:
            raise
        except Exception:  # noqa: BLE001 - only an estimate; the download reports real errors
            return None
        return None

    def _templates(self, items: list[Any]) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str) \
                    or not isinstance(item.get("content"), str):
                raise BadRequest("each prompt template needs a name and a content", param="id")
            filename = item["name"].strip()
            filename = filename if filename.endswith(".tmpl") else f"{filename}.tmpl"
            confine(self.models_path, filename, what="template name", write=True)
            out[filename] = item["content"]
        return out

    def _check_config(self, config: dict[str, Any], files: list[FileSpec],
                      templates: dict[str, str]) -> None:
        """Untrusted config content: no fetching/executing options, files confined and known."""
        bad = sorted(FORBIDDEN_KEYS & set(config))
        if bad:
            raise BadRequest(f"the config sets {', '.join(bad)}, which an installed config may not "
                             "set (it would make lokal fetch or run something on its own)", param="id")
        backend = config.get("backend")
        if backend is not None and str(backend).strip().lower() not in BACKEND_ALIASES:
            raise BadRequest(f"backend {backend!r} is not served by lokal (known: "
                             f"{', '.join(sorted(BACKEND_ALIASES))})", param="id")
        names = {spec.filename for spec in files} | set(templates)
        model = (config.get("parameters") or {}).get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("the config names no model file (parameters.model)", param="id")
        for field_name, value in [("parameters.model", model)] + [
                (f, config.get(f)) for f in FILE_FIELDS if isinstance(config.get(f), str)]:
            check_relative(value, what=field_name)
            target = confine(self.models_path, value, what=field_name, write=True)
            if value not in names and not any(n.startswith(value.rstrip("/") + "/") for n in names) \
                    and not target.exists():
                raise BadRequest(f"{field_name} names {value!r}, which is neither among the files to "
                                 "download nor in the models folder", param="id")
        try:
            ModelConfig.model_validate(config)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise BadRequest(f"the resulting config is not valid: {where}: {first['msg']}",
                             param="overrides") from None

    # Conflicts --------------------------------------------------------------------------

    def _users(self, exclude: str | None) -> dict[Path, set[str]]:
        """Which models use which files (by their configs and install records)."""
        users: dict[Path, set[str]] = {}

        def add(path: Path | None, who: str) -> None:
            if path is not None:
                users.setdefault(path.resolve(), set()).add(who)

        for entry in scan_models(self.models_path, self.config_file):
            if entry.name == exclude:
                continue
            add(entry.model_path, entry.name)
            for item in entry.downloads if entry.state != "broken" else ():  # type: ignore[union-attr]
                add(item.path, entry.name)
            config = entry.config
            for field_name in FILE_FIELDS:
                value = (config.model_extra or {}).get(field_name) if config is not None else None
                if isinstance(value, str):
                    add(self.models_path / value, entry.name)
            if entry.source is not None and entry.source.suffix.lower() in (".yaml", ".yml"):
                add(entry.source, entry.name)
        for record in self._records():
            if record.get("name") == exclude:
                continue
            for rel in record.get("files", []) + record.get("templates", []) + [record.get("config")]:
                if isinstance(rel, str):
                    add(self.models_path / rel, str(record.get("name")))
        return users

    def _check_conflicts(self, plan: Plan, force: bool) -> None:
        existing = {e.name: e for e in scan_models(self.models_path, self.config_file)}
        current = existing.get(plan.name)
        config_exists = plan.config_path.exists() or plan.config_path.with_suffix(".yml").exists()
        if (current is not None or config_exists) and not force:
            same = any(r.get("name") == plan.name and r.get("source") == plan.source for r in self._records())
            raise ModelExists(plan.name, same_source=same)
        if current is not None and current.source is not None \
                and current.source.resolve() != plan.config_path.resolve():
            raise Conflict(f"model {plan.name!r} is defined in {current.source.name}, which an install "
                           "does not overwrite; choose another name", param="name")
        plan.replace = current is not None or config_exists
        users = self._users(exclude=plan.name)
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
            target = self.models_path / template
            others = users.get(target.resolve(), set())
            if target.exists() and others and target.read_text(errors="replace") != plan.templates[template]:
                raise Conflict(f"template {template} belongs to model {', '.join(sorted(others))}",
                               param="id")

    def _check_disk(self, plan: Plan) -> None:
        from lokal.transfer import downloader as dl

        need = 0
        for spec in plan.files:
            if spec.skip or spec.size is None:
                continue
            partial = partial_path(spec.target)
            have = partial.stat().st_size if partial.exists() else 0
            need += max(0, spec.size - have)
        if not need:
            return
        self.models_path.mkdir(parents=True, exist_ok=True)
        free = self.downloader.free_bytes(self.models_path) if self.downloader else dl.disk_free(self.models_path)
        if free < need + DISK_RESERVE:
            raise InsufficientStorage(
                f"not enough disk space to install {plan.name}: {need} bytes needed (plus a "
                f"{DISK_RESERVE >> 20} MB reserve), {free} bytes free in {self.models_path}")

    # Committing ---------------------------------------------------------------------------

    def _commit(self, plan: Plan) -> None:
        with self._commit_lock:
            for spec in plan.files:
                if not spec.skip:
                    self.downloader.place(spec.target)
            for template, content in plan.templates.items():
                _write_atomic(confine(self.models_path, template, what="template name", write=True),
                              content.encode())
            text = yaml.safe_dump(plan.config, sort_keys=False, allow_unicode=True)
            _write_atomic(plan.config_path, text.encode())
            record = {"name": plan.name, "config": plan.config_path.name, "source": plan.source,
                      "files": [s.filename for s in plan.files], "templates": sorted(plan.templates),
                      "installed_at": int(time.time())}
            _write_atomic(self._record_path(plan.name), json.dumps(record, indent=2).encode())

    # Records and deletion -------------------------------------------------------------------

    def _record_path(self, name: str) -> Path:
        folder = self.models_path / STATE_DIR / "installs"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{name}.json"

    def _records(self) -> list[dict[str, Any]]:
        folder = self.models_path / STATE_DIR / "installs"
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

    def installed_names(self) -> set[str]:
        return {e.name for e in scan_models(self.models_path, self.config_file)}

    def remove(self, name: str) -> Job:
        """Delete a model: its config and the files its install record (or, without one, its
        config) names, except files another model still uses. Never a path from the caller."""
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or ".." in name \
                or "\x00" in name:
            raise UnsafePath(str(name), "give a model name, not a path", param="name")
        with self._claim_lock:
            running = self._claims.get(name)
            if running is not None and not running.processed:
                raise Conflict(f"model {name!r} is being installed by job {running.uuid}", param="name")
            with self._commit_lock:
                job = self._remove(name)
        self.jobs[job.uuid] = job
        if self.on_change is not None:
            self.on_change()
        return job

    def _remove(self, name: str) -> Job:
        entries = {e.name: e for e in scan_models(self.models_path, self.config_file)}
        entry = entries.get(name)
        record_path = self.models_path / STATE_DIR / "installs" / f"{name}.json"
        record = None
        if record_path.is_file():
            try:
                record = json.loads(record_path.read_text())
            except (OSError, ValueError):
                record = None
        if entry is None and record is None:
            raise NotFound(f"no model named {name!r} in the models folder", param="name")
        root = self.models_path.resolve()
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
        users = self._users(exclude=name)
        job = Job(name, name=name, deletion=True)
        for rel in dict.fromkeys(candidates):
            try:
                target = confine(self.models_path, rel, what="recorded file", write=True)
            except UnsafePath as exc:
                job.kept.append(f"{rel} ({exc.rule})")
                continue
            if target.resolve() in users:
                job.kept.append(f"{rel} (used by {', '.join(sorted(users[target.resolve()]))})")
                continue
            if target.is_file():
                target.unlink()
                job.removed.append(rel)
                _prune_empty(target.parent, root)
            partial_path(target).unlink(missing_ok=True)
        if config_rel is not None:
            (root / config_rel).unlink(missing_ok=True)
            job.removed.append(config_rel)
        record_path.unlink(missing_ok=True)
        job.status, job.message, job.finished_at = "done", "completed", time.time()
        log.info("removed model %s: %s", name, ", ".join(job.removed) or "nothing")
        return job


def _hf_meta(info: dict[str, Any]) -> dict[str, Any]:
    """sha256 and size of a file in a hub listing (LFS files carry their sha256)."""
    lfs = info.get("lfs") if isinstance(info.get("lfs"), dict) else {}
    sha = lfs.get("sha256") or lfs.get("oid")
    size = lfs.get("size") or info.get("size")
    out: dict[str, Any] = {}
    if isinstance(sha, str) and _SHA.match(sha):
        out["sha256"] = sha
    if isinstance(size, int) and not isinstance(size, bool):
        out["size"] = size
    return out


def policy_from_settings(settings: Any) -> OutboundPolicy:
    """The outbound policy a server's settings ask for (HF endpoint and token as
    huggingface_hub reads them: HF_ENDPOINT, HF_TOKEN or the saved login)."""
    endpoint = os.environ.get("HF_ENDPOINT")
    token = os.environ.get("HF_TOKEN")
    try:
        import huggingface_hub
        from huggingface_hub import constants

        endpoint = endpoint or constants.ENDPOINT
        token = token or huggingface_hub.get_token()
    except Exception:  # noqa: BLE001 - the library is optional for plain URLs
        pass
    return OutboundPolicy(allowed_hosts=frozenset(settings.download_hosts),
                          max_bytes=settings.max_download_bytes,
                          stall_timeout=settings.download_stall_timeout,
                          hf_endpoint=(endpoint or "https://huggingface.co").rstrip("/"),
                          hf_token=token)


def _write_atomic(path: Path, data: bytes) -> None:
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


def _prune_empty(folder: Path, root: Path) -> None:
    while folder.resolve() != root and root in folder.resolve().parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent
