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

The jobs themselves are `jobs`, planning `planning`, the conflict and disk checks
`conflicts`, committing and install records `records`, deletion `removal`; this module
runs them in order.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lokal.errors import BadRequest, Conflict, LokalError, NotFound, ServerError
from lokal.install import conflicts, records
from lokal.install.gallery import Galleries, GallerySource, parse_galleries
from lokal.install.jobs import Job
from lokal.install.planning import Plan, Planner
from lokal.install.removal import remove_model
from lokal.models.catalog import scan_models
from lokal.transfer.downloader import Cancelled, Downloader
from lokal.transfer.netguard import OutboundPolicy
from lokal.transfer.paths import UnsafePath

log = logging.getLogger(__name__)


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
        self.planner = Planner(self.models_path, policy, self.galleries, allow_file=allow_file)
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
        plan = self.planner.plan(ref_text, name, overrides, extra_files, job.variant)
        with self._claim_lock:
            running = self._claims.get(plan.name)
            if running is not None and not running.processed:
                raise Conflict(f"model {plan.name!r} is being installed by job {running.uuid}; wait "
                               "for it or cancel it", param="name")
            conflicts.check_conflicts(plan, force, self.models_path, self.config_file)
            conflicts.check_disk(plan, self.models_path, self.downloader)
            self._claims[plan.name] = job
        if job._cancel.is_set():
            raise Cancelled(plan.name)
        return plan

    def _commit(self, plan: Plan) -> None:
        with self._commit_lock:
            records.commit(plan, self.models_path, self.downloader)

    # Installed models and deletion ------------------------------------------------------------

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
                job = remove_model(name, self.models_path, self.config_file)
        self.jobs[job.uuid] = job
        if self.on_change is not None:
            self.on_change()
        return job


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
