"""An install job as its callers see it: its state, its progress events, waiting and
cancelling. `InstallManager` (in `manager`) creates and drives jobs; everything here runs on
the caller's asyncio loop."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid as uuidlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from lokal.errors import LokalError
from lokal.install.planning import FileSpec
from lokal.units import format_size



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
            "file_size": format_size(self.file_total) if self.file_total is not None else "",
            "downloaded_size": format_size(self.file_completed) if self.file_completed is not None else "",
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
