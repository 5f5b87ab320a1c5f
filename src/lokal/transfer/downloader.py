"""Robust, resumable, shared file downloads into the models folder.

A file is downloaded to a hidden partial file beside its target
(`.NAME.partial`, with `.NAME.partial.json` recording the URL, ETag and size),
and only renamed to its name once whole and its sha256 (when known) matches. A
cut connection is resumed with an HTTP `Range` request validated by `If-Range`
(the ETag) and by the total size in `Content-Range`; a server that cannot resume
(200 instead of 206, or a changed file) makes it start again from zero. Transport
errors and silence longer than the stall timeout are retried with backoff. Free
disk space is checked before bytes are fetched (`InsufficientStorage`, 507). Two
requests for one target in this process share one transfer; another process
downloading the same target is waited for (an advisory lock on the partial).

A cancelled download keeps its partial file, so the next attempt resumes it; a
failed one (hash mismatch, HTTP error) deletes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from lokal.errors import InsufficientStorage, ServerError
from lokal.transfer.netguard import OutboundPolicy, URLRefused, _shown
from lokal.transfer.paths import hidden_sibling
from lokal.units import format_size

log = logging.getLogger(__name__)

CHUNK = 1 << 20
#: Free space kept beyond what a download needs.
DISK_RESERVE = 64 << 20
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")

Progress = Callable[[int, int | None], None]  # (completed bytes, total or None)


class DownloadError(ServerError):
    """A download that failed; the message says why, for the user."""


class ChecksumMismatch(DownloadError):
    def __init__(self, name: str, url: str, expected: str, actual: str) -> None:
        super().__init__(f"{name} from {_shown(url)} does not match its sha256: expected {expected}, "
                         f"got {actual}; the file was deleted")
        self.expected = expected
        self.actual = actual


class Cancelled(Exception):
    """The download was cancelled; its partial file is kept for the next attempt."""


def disk_free(path: Path) -> int:
    """Free bytes on the file system holding path (tests patch this)."""
    return shutil.disk_usage(path).free


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def partial_path(target: Path) -> Path:
    return hidden_sibling(target, "partial")


@dataclass
class _Transfer:
    """One download of one target, shared by everyone who asked for it."""

    url: str
    listeners: list[Progress] = field(default_factory=list)
    cancels: list[threading.Event] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    completed: int = 0
    total: int | None = None

    def report(self, completed: int, total: int | None) -> None:
        self.completed, self.total = completed, total
        for listener in list(self.listeners):
            with contextlib.suppress(Exception):
                listener(completed, total)

    @property
    def abandoned(self) -> bool:
        """Everyone waiting for this transfer has cancelled."""
        return all(event.is_set() for event in list(self.cancels))


class Downloader:
    """Fetches files into place under a policy; one per server (or CLI run)."""

    def __init__(self, policy: OutboundPolicy, *, retries: int = 5, backoff: float = 0.5,
                 free_bytes: Callable[[Path], int] | None = None) -> None:
        self.policy = policy
        self.retries = retries
        self.backoff = backoff
        self.free_bytes = free_bytes or (lambda p: disk_free(p))
        self._lock = threading.Lock()
        self._inflight: dict[Path, _Transfer] = {}
        self._place_lock = threading.Lock()

    # Public ------------------------------------------------------------------

    def fetch(self, url: str, target: Path, *, sha256: str | None = None, size: int | None = None,
              on_progress: Progress | None = None, cancel: threading.Event | None = None,
              place: bool = True) -> Path:
        """Download url (http(s), already mapped) for target. With place, rename it to target
        once verified; else leave the verified partial for `place()`. Returns the path that
        holds the verified bytes. Raises DownloadError, URLRefused, InsufficientStorage or
        Cancelled (partial kept). A request for a target already being downloaded joins that
        transfer; the transfer stops only when everyone waiting for it has cancelled."""
        target = Path(target)
        if place and target.exists() and not target.is_symlink():
            return target
        cancel = cancel or threading.Event()
        with self._lock:
            transfer = self._inflight.get(target)
            owner = transfer is None
            if transfer is None:
                transfer = _Transfer(url)
                self._inflight[target] = transfer
            transfer.cancels.append(cancel)
            if on_progress is not None:
                transfer.listeners.append(on_progress)
        try:
            if owner:
                threading.Thread(target=self._own, args=(transfer, url, target, sha256, size),
                                 name=f"download {target.name}", daemon=True).start()
            else:
                log.info("%s: joining the download already running", target.name)
                if on_progress is not None and transfer.completed:
                    on_progress(transfer.completed, transfer.total)
            while not transfer.done.wait(0.05):
                if cancel.is_set():
                    raise Cancelled(target.name)
            if transfer.error is not None:
                if isinstance(transfer.error, Cancelled):
                    raise Cancelled(target.name)
                raise transfer.error
            if sha256 is not None and not owner:
                self._verify_shared(target, url, sha256)
            return self.place(target) if place else partial_path(target)
        finally:
            with self._lock:
                if on_progress is not None and on_progress in transfer.listeners:
                    transfer.listeners.remove(on_progress)

    def _own(self, transfer: _Transfer, url: str, target: Path, sha256: str | None,
             size: int | None) -> None:
        try:
            self._run(transfer, url, target, sha256, size)
        except BaseException as exc:  # handed to every waiter
            transfer.error = exc
        finally:
            with self._lock:
                self._inflight.pop(target, None)
            transfer.done.set()

    def place(self, target: Path) -> Path:
        """Rename a verified partial to target (a no-op if another request did already)."""
        partial = partial_path(target)
        with self._place_lock:
            if partial.exists():
                meta = _read_meta(partial)
                if not meta.get("complete"):
                    raise DownloadError(f"{target.name}: the partial download is not complete")
                if target.is_symlink():
                    raise DownloadError(f"{target.name} is a symlink; refusing to write through it")
                os.replace(partial, target)
                _meta_path(partial).unlink(missing_ok=True)
            elif not target.exists():
                raise DownloadError(f"{target.name}: nothing was downloaded")
        return target

    def is_ready(self, target: Path, sha256: str | None = None) -> bool:
        """Whether a complete, verified partial waits for target."""
        partial = partial_path(target)
        meta = _read_meta(partial)
        return bool(partial.exists() and meta.get("complete")
                    and (sha256 is None or meta.get("sha256") == sha256)
                    and partial.stat().st_size == meta.get("total", -1))

    # The transfer ---------------------------------------------------------------

    def _run(self, transfer: _Transfer, url: str, target: Path, sha256: str | None,
             size: int | None) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = partial_path(target)
        lock_path = hidden_sibling(target, "lock")
        with lock_path.open("a") as lock_file:
            self._lock_file(lock_file, transfer, target)
            try:
                if self.is_ready(target, sha256):
                    meta = _read_meta(partial)
                    transfer.report(meta["total"], meta["total"])
                    return
                self._download(transfer, url, target, partial, sha256, size)
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
                lock_path.unlink(missing_ok=True)

    def _lock_file(self, lock_file, transfer: _Transfer, target: Path) -> None:  # noqa: ANN001
        """Wait for another process downloading the same target, if any."""
        announced = False
        while True:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if not announced:
                    log.info("%s: another process is downloading it; waiting", target.name)
                    announced = True
                if transfer.abandoned:
                    raise Cancelled(target.name) from None
                time.sleep(0.2)

    def _download(self, transfer: _Transfer, url: str, target: Path, partial: Path,
                  sha256: str | None, size: int | None) -> None:
        name = target.name
        meta = _read_meta(partial)
        if meta.get("url") != url or not partial.exists():
            _discard(partial)
            meta = {"url": url}
        attempt = 0
        last_error = ""
        client = self.policy.client()
        try:
            while True:
                if transfer.abandoned:
                    raise Cancelled(name)
                try:
                    finished = self._attempt(client, transfer, url, name, partial, meta, sha256, size)
                except (httpx.TransportError, _Retry) as exc:
                    finished = False
                    last_error = str(exc) or type(exc).__name__
                    if isinstance(exc, httpx.TimeoutException):
                        last_error = f"no data for {self.policy.stall_timeout:g} s ({type(exc).__name__})"
                if finished:
                    return
                attempt += 1
                if attempt > self.retries:
                    raise _Exhausted(f"downloading {name} from {_shown(url)} failed after "
                                        f"{self.retries + 1} attempts: {last_error}; the partial "
                                        "file is kept and the next attempt resumes it")
                delay = min(self.backoff * 2 ** (attempt - 1), 30.0)
                log.warning("%s: %s; retrying in %.1f s (attempt %d of %d)", name, last_error,
                            delay, attempt + 1, self.retries + 1)
                deadline = time.monotonic() + delay
                while time.monotonic() < deadline:
                    if transfer.abandoned:
                        raise Cancelled(name)
                    time.sleep(min(0.05, delay))
        except _Exhausted:
            raise  # the partial file is kept: the next attempt resumes it
        except (DownloadError, URLRefused):
            _discard(partial)
            raise
        finally:
            client.close()

    def _attempt(self, client: httpx.Client, transfer: _Transfer, url: str, name: str,
                 partial: Path, meta: dict, sha256: str | None, size: int | None) -> bool:
        have = partial.stat().st_size if partial.exists() else 0
        headers = {"Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
            if meta.get("etag"):
                headers["If-Range"] = meta["etag"]
        with self.policy.open(client, url, headers=headers) as response:
            if response.status_code == 416 and have and have == meta.get("total"):
                return self._finish(transfer, name, url, partial, meta, sha256)
            mode, have, total = self._resume_or_restart(response, url, name, partial, meta, have)
            expected_total = self._check_room(url, name, partial, total, size, have)
            meta.update(url=url, etag=response.headers.get("etag"), total=expected_total, complete=False)
            _write_meta(partial, meta)
            digest = _hash_prefix(partial) if mode == "ab" else hashlib.sha256()
            received = self._receive(response, transfer, url, name, partial, mode, digest, have,
                                     expected_total)
            if expected_total is not None and received < expected_total:
                raise _Retry(f"the connection ended after {received} of {expected_total} bytes")
            if expected_total is None:
                meta["total"] = received
        return self._finish(transfer, name, url, partial, meta, sha256, digest.hexdigest())

    @staticmethod
    def _resume_or_restart(response: httpx.Response, url: str, name: str, partial: Path, meta: dict,
                           have: int) -> tuple[str, int, int | None]:
        """From the answer's status: append to the partial file ("ab") or write it anew
        ("wb"), the bytes already there, and the whole file's size if the server says it."""
        status = response.status_code
        if status == 206 and have:
            match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
            total = int(match.group(3)) if match and match.group(3) != "*" else None
            if (match is None or int(match.group(1)) != have
                    or (meta.get("total") and total != meta.get("total"))):
                log.info("%s: the server answered the resume with another range; starting over", name)
                _truncate(partial)
                meta.pop("etag", None)
                raise _Retry("the server's range did not fit the partial file")
            return "ab", have, total
        if status == 200:
            if have:
                log.info("%s: the server cannot resume (HTTP 200 to a Range request); "
                         "starting from zero", name)
            declared = response.headers.get("content-length")
            return "wb", 0, int(declared) if declared and declared.isdigit() else None
        if status in (408, 425, 429) or status >= 500:
            raise _Retry(f"HTTP {status}")
        if status == 416:
            _truncate(partial)
            raise _Retry("HTTP 416 to a resume; starting over")
        raise DownloadError(f"downloading {name} from {_shown(url)} failed: HTTP {status}")

    def _check_room(self, url: str, name: str, partial: Path, total: int | None, size: int | None,
                    have: int) -> int | None:
        """The file's size (the server's word, else its source's) checked against its source's
        declaration, the size cap and the free disk; returned when known."""
        expected_total = total if total is not None else size
        if size is not None and total is not None and total != size:
            raise URLRefused(url, f"the file is {total} bytes, not the {size} its source "
                                  "declares (the entry's size is its size cap); not kept")
        cap = self.policy.max_bytes
        if cap is not None and expected_total is not None and expected_total > cap:
            raise URLRefused(url, f"the file is {format_size(expected_total)}, over the size cap of "
                                  f"{format_size(cap)} (MAX_DOWNLOAD_SIZE or the entry's size)")
        need = (expected_total - have) if expected_total is not None else 0
        free = self.free_bytes(partial.parent)
        if need and free < need + DISK_RESERVE:
            raise InsufficientStorage(
                f"not enough disk space for {name}: {need} bytes needed (plus a "
                f"{format_size(DISK_RESERVE)} reserve), {free} bytes free in {partial.parent}")
        return expected_total

    def _receive(self, response: httpx.Response, transfer: _Transfer, url: str, name: str,
                 partial: Path, mode: str, digest: Any, have: int, expected_total: int | None) -> int:
        """The body into the partial file and the digest; the bytes the file holds after."""
        cap = self.policy.max_bytes
        received = have
        transfer.report(received, expected_total)
        last = time.monotonic()
        with partial.open(mode) as out:
            for chunk in response.iter_raw():
                if transfer.abandoned:
                    out.flush()
                    raise Cancelled(name)
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                if cap is not None and received > cap:
                    out.close()
                    _discard(partial)
                    raise URLRefused(url, f"the file grew over the size cap of {format_size(cap)}")
                if expected_total is not None and received > expected_total:
                    out.close()
                    _discard(partial)
                    raise DownloadError(f"{name} from {_shown(url)} sent more bytes than it "
                                        f"declared ({expected_total}); not kept")
                now = time.monotonic()
                if now - last >= 0.1:
                    last = now
                    transfer.report(received, expected_total)
        transfer.report(received, expected_total)
        return received

    def _finish(self, transfer: _Transfer, name: str, url: str, partial: Path, meta: dict,
                sha256: str | None, actual: str | None = None) -> bool:
        actual = actual or file_sha256(partial)  # hashed while received, or (416: whole) now
        if sha256 is not None and actual != sha256:
            _discard(partial)
            raise ChecksumMismatch(name, url, sha256, actual)
        with open(partial, "rb+") as stream:
            os.fsync(stream.fileno())
        meta.update(complete=True, sha256=actual, total=partial.stat().st_size)
        _write_meta(partial, meta)
        transfer.report(meta["total"], meta["total"])
        return True

    def _verify_shared(self, target: Path, url: str, sha256: str) -> None:
        """A joiner asking for a hash checks it too (the owner may have had none)."""
        partial = partial_path(target)
        path = target if target.exists() else partial
        meta = _read_meta(partial)
        actual = meta.get("sha256") if path == partial and meta.get("complete") else file_sha256(path)
        if actual != sha256:
            raise ChecksumMismatch(target.name, url, sha256, str(actual))


class _Exhausted(DownloadError):
    """Out of retries; the partial file stays for the next attempt."""


class _Retry(Exception):
    """A failure worth another attempt (resuming where the partial file ends)."""


def _hash_prefix(partial: Path) -> Any:
    """A sha256 already fed with the bytes a resumed partial file holds."""
    digest = hashlib.sha256()
    with partial.open("rb") as stream:
        while block := stream.read(CHUNK):
            digest.update(block)
    return digest


def _meta_path(partial: Path) -> Path:
    return partial.parent / f"{partial.name}.json"


def _read_meta(partial: Path) -> dict:
    try:
        data = json.loads(_meta_path(partial).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_meta(partial: Path, meta: dict) -> None:
    path = _meta_path(partial)
    tmp = path.parent / f"{path.name}.tmp"
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, path)


def _truncate(partial: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()


def _discard(partial: Path) -> None:
    partial.unlink(missing_ok=True)
    _meta_path(partial).unlink(missing_ok=True)
