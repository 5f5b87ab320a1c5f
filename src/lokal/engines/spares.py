"""Spare engine workers: a process per kind of engine, started ahead with its libraries imported.

A model's first load used to start a worker process and import its engine's
libraries before it read a byte of the model: Python and lokal, then torch and
sentence-transformers (seconds on a quiet machine, tens of seconds on a busy
one), faster-whisper, xllamacpp. `SpareWorkers` keeps one worker per engine kind
already started and past those imports, for the kinds the pool asks for (those
with a model not loaded yet), and hands it the next load of that kind; while
another model of the kind waits for its first load, a new spare is started after
each hand-over (it imports on a thread of lowered priority, so that it yields the
CPU to the requests being served; the first spares, at start-up, import at full
speed). Each spare is started fresh
(`python -m lokal.engines.worker`, the same as any worker), never forked from
the server.

Memory: a spare holds its libraries (about 30-60 MiB for llama.cpp or ONNX
Runtime, 400+ MiB for torch). Whoever owns the memory budget (the pool) counts
the spares in, starts one only when its `fits` check allows, and sheds them all
before it unloads a model to make room (`shed`). `SPARE_WORKERS=off` starts none.

This module knows the processes only through `SpareProcess`; how a worker is
started and spoken to is `lokal.engines.worker`'s business.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)


class SpareProcess(Protocol):
    """A started worker waiting for its load."""

    @property
    def pid(self) -> int: ...

    def alive(self) -> bool: ...

    def stop(self) -> None: ...


def rss(pid: int) -> int | None:
    """A process's resident memory in bytes (Linux /proc; None elsewhere or when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class SpareWorkers:
    """At most one spare worker per engine kind, for the kinds wanted."""

    def __init__(self, spawn: Callable[[str, bool], SpareProcess]) -> None:
        self._spawn = spawn
        self._lock = threading.Lock()
        self._wanted: set[str] = set()
        self._spares: dict[str, SpareProcess] = {}
        self._closed = False
        self.handed_out = 0  # loads that got a spare (for tests and the log)

    def want(self, kinds: Iterable[str]) -> None:
        """The engine kinds the models folder needs: spares of others are stopped."""
        with self._lock:
            self._wanted = set(kinds)
            stale = [kind for kind in self._spares if kind not in self._wanted]
            gone = [self._spares.pop(kind) for kind in stale]
        for process in gone:
            process.stop()

    @property
    def wanted(self) -> set[str]:
        return set(self._wanted)

    def held(self) -> list[str]:
        """The kinds that have a spare now."""
        with self._lock:
            return sorted(self._spares)

    def refill(self, fits: Callable[[str], bool] = lambda kind: True, background: bool = False) -> list[str]:
        """Start a spare for each wanted kind without one, when fits(kind) allows; the kinds started.
        In the background (the server is serving) a spare imports at a lowered priority."""
        started = []
        for kind in sorted(self._wanted):
            with self._lock:
                if self._closed or kind in self._spares or kind not in self._wanted:
                    continue
            if not fits(kind):
                continue
            try:
                process = self._spawn(kind, background)
            except Exception as exc:  # noqa: BLE001 - a spare is an optimisation: say so, go on
                log.warning("could not start a spare %s worker: %s", kind, exc)
                continue
            with self._lock:
                if self._closed or kind in self._spares or kind not in self._wanted:
                    extra: SpareProcess | None = process
                else:
                    self._spares[kind] = process
                    extra = None
            if extra is not None:
                extra.stop()
                continue
            log.debug("spare %s worker %d started", kind, process.pid)
            started.append(kind)
        return started

    def take(self, kind: str) -> SpareProcess | None:
        """The spare of kind for a load (None: there is none, or it died); the caller owns it."""
        with self._lock:
            process = self._spares.pop(kind, None)
        if process is None:
            return None
        if not process.alive():
            log.warning("spare %s worker %d had ended; starting the load in a new one", kind, process.pid)
            process.stop()
            return None
        self.handed_out += 1
        return process

    def shed(self, keep: str = "") -> list[str]:
        """Stop every spare but keep's (memory is needed); the kinds stopped."""
        with self._lock:
            spares = {kind: process for kind, process in self._spares.items() if kind != keep}
            self._spares = {kind: process for kind, process in self._spares.items() if kind == keep}
        for process in spares.values():
            process.stop()
        if spares:
            log.info("stopped spare worker(s) %s to free memory", ", ".join(sorted(spares)))
        return sorted(spares)

    def describe(self) -> list[dict[str, object]]:
        """Each spare: its engine kind, process id and resident memory."""
        with self._lock:
            spares = dict(self._spares)
        return [{"engine": kind, "pid": process.pid, "rss_bytes": rss(process.pid)}
                for kind, process in sorted(spares.items())]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            spares, self._spares = self._spares, {}
        for process in spares.values():
            process.stop()
