"""llama.cpp writes its log, load failures included, straight to file descriptor 2.

`install()` puts a pipe under fd 2 and reads it on a thread: engine lines go to
this module's logger (`lokal.engines.engine_log`) (errors as warnings, the rest at debug level), other
lines pass through to the real stderr, and recent engine lines are kept so that
a failed load can tell the user why. Process-wide by nature; installed once.
"""

from __future__ import annotations

import atexit
import collections
import fcntl
import logging
import os
import re
import sys
import threading

_LINE = re.compile(r"^\d+\.\d+\.\d+\.\d+ ([DIWE]) (.*)$")
_LEVELS = {"E": logging.WARNING, "W": logging.DEBUG, "I": logging.DEBUG, "D": logging.DEBUG}

log = logging.getLogger(__name__)


class EngineLog:
    """The reader of the captured fd 2 and a ring of recent engine lines."""

    def __init__(self) -> None:
        self._lines: collections.deque[tuple[int, str, str]] = collections.deque(maxlen=400)
        self._seq = 0
        self._lock = threading.Lock()
        self._original_fd = -1

    def mark(self) -> int:
        """A position to read lines from, taken before an operation."""
        with self._lock:
            return self._seq

    def since(self, mark: int) -> list[tuple[str, str]]:
        """(level, text) of engine lines logged after mark."""
        with self._lock:
            return [(lvl, text) for seq, lvl, text in self._lines if seq > mark]

    def _record(self, level: str, text: str) -> None:
        with self._lock:
            self._seq += 1
            self._lines.append((self._seq, level, text))

    def _pump(self, read_fd: int) -> None:
        buffer = b""
        while True:
            try:
                data = os.read(read_fd, 65536)
            except OSError:
                return
            if not data:
                return
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for raw in lines:
                self._handle(raw.decode("utf-8", errors="replace"))

    def _handle(self, line: str) -> None:
        match = _LINE.match(line)
        if match is None:
            if line.strip():
                os.write(self._original_fd, (line + "\n").encode())
            return
        level, text = match.groups()
        self._record(level, text.strip())
        log.log(_LEVELS[level], "%s", text.strip())

    def install(self) -> None:
        sys.stderr.flush()
        self._original_fd = os.dup(2)
        read_fd, write_fd = os.pipe()
        # A full pipe must drop engine output, never block the engine.
        fcntl.fcntl(write_fd, fcntl.F_SETFL, fcntl.fcntl(write_fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        os.dup2(write_fd, 2)
        os.close(write_fd)
        sys.stderr = open(self._original_fd, "w", buffering=1, closefd=False,  # noqa: SIM115
                          encoding="utf-8", errors="backslashreplace")
        for handler in logging.root.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is sys.__stderr__:
                handler.setStream(sys.stderr)
        threading.Thread(target=self._pump, args=(read_fd,), name="engine-log", daemon=True).start()
        atexit.register(self._restore)

    def _restore(self) -> None:
        # Engines destroyed at interpreter exit log to fd 2 after the reader is gone.
        try:
            os.dup2(self._original_fd, 2)
        except OSError:
            pass


class Passthrough(EngineLog):
    """No capture: engine output goes to fd 2 untouched (a worker process, whose fd 2 the
    server reads, so that even the last line before an abort reaches it)."""

    def install(self) -> None:
        pass


def parse(line: str) -> tuple[str, str] | None:
    """(level, text) of an engine log line, None for anything else."""
    match = _LINE.match(line)
    return (match.group(1), match.group(2).strip()) if match else None


def level(letter: str) -> int:
    """The logging level lokal logs an engine line of that letter at."""
    return _LEVELS.get(letter, logging.DEBUG)


_engine_log: EngineLog | None = None
_install_lock = threading.Lock()


def passthrough() -> None:
    """Leave fd 2 alone in this process (see `Passthrough`); before any `install()`."""
    global _engine_log
    with _install_lock:
        if _engine_log is None:
            _engine_log = Passthrough()


def install() -> EngineLog:
    """Capture fd 2 for this process (idempotent)."""
    global _engine_log
    with _install_lock:
        if _engine_log is None:
            capture = EngineLog()
            capture.install()
            _engine_log = capture
        return _engine_log
