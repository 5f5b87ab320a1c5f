"""Worker processes from the server's side: spawning one (from one long-lived thread, never
forked), reading its fd 2 (its log records and the engine's lines, kept for a crash report),
waiting for its end and telling the server log how it ended."""

from __future__ import annotations

import collections
import logging
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from lokal.engines import engine_log
from lokal.engines.base import ChunkSink
from lokal.engines.worker.protocol import Channel

log = logging.getLogger(__name__)

TAIL_LINES = 20  # engine log lines logged when a worker dies


class Spawner:
    """Starts worker processes from one long-lived thread: Linux sends the parent-death
    signal when the *thread* that started a child ends, so no short-lived thread may."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], queue.SimpleQueue[Any]]] = queue.SimpleQueue()
        threading.Thread(target=self._run, name="lokal-spawner", daemon=True).start()

    def _run(self) -> None:
        while True:
            job, reply = self._jobs.get()
            try:
                reply.put((True, job()))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                reply.put((False, exc))

    def call(self, job: Callable[[], Any]) -> Any:
        reply: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._jobs.put((job, reply))
        ok, value = reply.get()
        if not ok:
            raise value
        return value


def describe_exit(code: int | None) -> str:
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (the kernel's OOM killer, or someone else)" if -code == signal.SIGKILL else ""
        return f"was killed by {name}{hint}"
    return f"exited with code {code}"


class Call:
    """One call sent to a worker: its sink, and its result or error once done."""

    __slots__ = ("sink", "done", "result", "error", "stopped")

    def __init__(self, sink: ChunkSink | None) -> None:
        self.sink = sink
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.stopped = False


class WorkerProcess:
    """One running worker: its process, channel, log tail and reader threads."""

    def __init__(self, popen: subprocess.Popen[bytes], channel: Channel) -> None:
        self.popen = popen
        self.channel = channel
        self.calls: dict[int, Call] = {}
        self.lines: collections.deque[str] = collections.deque(maxlen=200)
        self.engine_lines: list[tuple[str, str]] = []  # while loading, for the failure's reason
        self.loading = True
        self.stderr_done = threading.Event()
        self.dead = False
        self.kill_reason: str | None = None

    # As a spare (lokal.engines.spares.SpareProcess) ---------------------------

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        """End a worker that was never given a model."""
        self.dead = True
        try:
            self.popen.kill()
        except OSError:
            pass
        wait_for_exit(self.popen)
        self.stderr_done.wait(2)
        self.channel.close()


def spawn(spawner: Spawner) -> WorkerProcess:
    """A new worker process (spawned, never forked), its fd 2 read from now on."""
    parent, child = socket.socketpair()
    try:
        command = [sys.executable, "-m", "lokal.engines.worker", str(child.fileno()), str(os.getpid())]
        # No gdb backtrace on an abort: slow, and it buries the assert in the log tail.
        env = dict(os.environ, GGML_NO_BACKTRACE="1")
        popen = spawner.call(lambda: subprocess.Popen(
            command, pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, close_fds=True))
    finally:
        child.close()
    process = WorkerProcess(popen, Channel(parent))
    threading.Thread(target=read_stderr, args=(process,), name="lokal-worker-log", daemon=True).start()
    return process


def spawn_spare(spawner: Spawner, engine_name: str, background: bool) -> WorkerProcess:
    """A worker that imports engine_name's libraries now (at a lowered priority when in the
    background, while the server serves) and waits for its load."""
    process = spawn(spawner)
    try:
        process.channel.send(("prepare", engine_name, logging.getLogger().getEffectiveLevel(), background))
    except OSError:
        pass  # it died at once: its load finds it dead and starts another
    return process


def read_stderr(process: WorkerProcess) -> None:
    """The worker's fd 2: its log records re-logged here, engine lines kept for a crash report."""
    stream = process.popen.stderr
    assert stream is not None
    try:
        for raw in stream:
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            if not line.strip():
                continue
            process.lines.append(line)
            parsed = engine_log.parse(line)
            if parsed is None:
                sys.stderr.write(line + "\n")  # a traceback, an assert: as an in-process engine would
                continue
            if process.loading:
                process.engine_lines.append(parsed)
            engine_log.log.log(engine_log.level(parsed[0]), "%s", parsed[1])
    except (OSError, ValueError):
        pass
    finally:
        try:
            stream.close()  # now, not when the Popen is collected: the server's open files stay level
        except OSError:
            pass
        process.stderr_done.set()


IMPORTANT = re.compile(r"GGML_ASSERT|GGML_ABORT|error|failed|terminate", re.IGNORECASE)


def last_assert(lines: collections.deque[str]) -> str:
    """What the engine asserted before it aborted, without source paths."""
    for line in reversed(lines):
        at = line.find("GGML_ASSERT")
        if at >= 0:
            return line[at:]
    return ""


def wait_for_exit(popen: subprocess.Popen[bytes]) -> int | None:
    try:
        return popen.wait(timeout=10)
    except subprocess.TimeoutExpired:
        popen.kill()
        try:
            return popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            return None


def log_death(name: str, process: WorkerProcess, how: str, when: str) -> None:
    """The server log's account of a worker's end: how, when, and the engine's last lines."""
    lines = list(process.lines)
    tail = lines[-TAIL_LINES:]
    # An assert or error further up says more than the lines after it.
    tail = [line for line in lines[:-TAIL_LINES] if IMPORTANT.search(line)][-5:] + tail
    log.error("model %s: worker %d %s %s; last engine log lines:\n%s", name, process.popen.pid,
              how, when, "\n".join("  " + line for line in tail) or "  (none)")
