"""Engines in supervised worker processes (ENGINE_ISOLATION=process, the default).

A llama.cpp abort (a GGML_ASSERT, a malformed tensor) or the OOM killer ends the
process it hits. So each loaded model's engine runs in a child process of its
own, started fresh (`python -m lokal.engines.worker`, never forked from a server
holding threads), and `WorkerEngine` stands in for it in the server: the same
`Engine` methods, each a message over a socket pair.

The protocol: length-prefixed pickles (both ends are this module). The server
sends `("load", engine, options, log level)`, then calls `(kind, id, *args)` and
`("x", id)` to cancel a stream; the worker answers `("ready", slots, dimensions)`
or `("load_error", message, from_engine)`, then per call chunks `("c", id, chunk)`
and one `("d", id, result)` or `("e", id, error)`. A sink that returns True sends
the cancel at once, and the worker's sink returns True from the next token on,
so a client that goes away still frees its slot within a token or two.

Supervision: the worker's fd 2 is a pipe the server reads (llama.cpp's log lines,
the worker's own log records, and whatever an abort prints last). When the
socket ends without a `close`, the worker died: its running calls fail with
`EngineStopped`, the server log gets the signal or exit code and the last engine
lines, and `on_exit` tells the pool. Calls still waiting for a slot had not
reached the engine: they start a fresh worker and run there. The worker dies
with the server (PR_SET_PDEATHSIG, and it exits when its socket ends).
"""

from __future__ import annotations

import collections
import ctypes
import itertools
import logging
import os
import pickle
import queue
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from lokal.engines import engine_log
from lokal.engines.base import (AudioSink, Engine, ChunkSink, EngineDied, Embeddings, ImageJob, ImageResult,
                                LoadOptions, ModelLoadError, ProgressSink, Scores, Speech, SpeechSegment,
                                Transcription)
from lokal.engines.spares import SpareWorkers
from lokal.errors import EngineError, EngineStopped

# Named, not __name__: the worker runs as `python -m lokal.engines.worker` (__main__).
log = logging.getLogger("lokal.engines.worker")

_HEADER = struct.Struct("!I")
TAIL_LINES = 20  # engine log lines logged when a worker dies


class _Channel:
    """Length-prefixed pickles over a stream socket; send is thread-safe."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._reader = sock.makefile("rb")
        self._lock = threading.Lock()

    def send(self, message: Any) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            self._sock.sendall(_HEADER.pack(len(data)) + data)

    def recv(self) -> Any:
        """The next message; None when the other end has gone."""
        try:
            head = self._reader.read(_HEADER.size)
            if len(head) < _HEADER.size:
                return None
            (size,) = _HEADER.unpack(head)
            data = self._reader.read(size)
        except (OSError, ValueError):
            return None
        if len(data) < size:
            return None
        return pickle.loads(data)

    def close(self) -> None:
        for closable in (self._reader, self._sock):
            try:
                closable.close()
            except OSError:
                pass


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


class WorkerFactory:
    """A pool engine factory: every engine in a worker process of its own; with spares on,
    a load of a kind of engine takes the worker started ahead for it (`lokal.engines.spares`)."""

    def __init__(self, spares: bool = False) -> None:
        self.spawner = Spawner()
        self.spares = (SpareWorkers(lambda kind, background: _spawn_spare(self.spawner, kind, background))
                       if spares else None)

    def __call__(self, engine_name: str, options: LoadOptions) -> Engine:
        return WorkerEngine(engine_name, options, spawner=self.spawner, spares=self.spares)


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


class _Call:
    __slots__ = ("sink", "done", "result", "error", "stopped")

    def __init__(self, sink: ChunkSink | None) -> None:
        self.sink = sink
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.stopped = False


class _Process:
    """One running worker: its process, channel, log tail and reader threads."""

    def __init__(self, popen: subprocess.Popen[bytes], channel: _Channel) -> None:
        self.popen = popen
        self.channel = channel
        self.calls: dict[int, _Call] = {}
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
        _wait(self.popen)
        self.stderr_done.wait(2)
        self.channel.close()


def _spawn(spawner: Spawner) -> _Process:
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
    process = _Process(popen, _Channel(parent))
    threading.Thread(target=_read_stderr, args=(process,), name="lokal-worker-log", daemon=True).start()
    return process


def _spawn_spare(spawner: Spawner, engine_name: str, background: bool) -> _Process:
    """A worker that imports engine_name's libraries now (at a lowered priority when in the
    background, while the server serves) and waits for its load."""
    process = _spawn(spawner)
    try:
        process.channel.send(("prepare", engine_name, logging.getLogger().getEffectiveLevel(), background))
    except OSError:
        pass  # it died at once: its load finds it dead and starts another
    return process


class WorkerEngine(Engine):
    """A model whose engine runs in a supervised worker process."""

    def __init__(self, engine_name: str, options: LoadOptions, *, spawner: Spawner | None = None,
                 spares: SpareWorkers | None = None) -> None:
        self.engine_name = engine_name
        self.options = options
        self.name = options.model_path.name
        self._spawner = spawner or Spawner()
        self._spares = spares
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._busy = 0      # slots taken by calls that reached the worker
        self._waiting = 0   # calls waiting for a slot
        self._closing = False
        self._on_exit: Callable[[str], None] | None = None
        self._dimensions: int | None = None
        self._process: _Process | None = None
        self._process = self._start()

    # Engine ------------------------------------------------------------------

    def supervise(self, name: str, on_exit: Callable[[str], None]) -> None:
        self.name = name
        self._on_exit = on_exit

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.popen.pid if process is not None else None

    @property
    def dimensions(self) -> int | None:
        return self._dimensions

    def chat(self, body: dict[str, Any], sink: ChunkSink, *, streamed: bool = True) -> None:
        self._call("chat", (body,), sink, _slots_for(body, self.slots))

    def complete(self, body: dict[str, Any], sink: ChunkSink, *, streamed: bool = True) -> None:
        self._call("complete", (body,), sink, _slots_for(body, self.slots))

    def infill(self, body: dict[str, Any], sink: ChunkSink, *, streamed: bool = True) -> None:
        self._call("infill", (body,), sink, 1)

    def text_op(self, op: str, payload: dict[str, Any]) -> Any:
        return self._call("text_op", (op, payload))

    def embed(self, inputs: list[str] | list[list[int]], truncate: bool) -> Embeddings:
        return self._call("embed", (inputs, truncate))  # type: ignore[no-any-return]

    def rerank(self, query: str, documents: list[str]) -> Scores:
        return self._call("rerank", (query, documents))  # type: ignore[no-any-return]

    def count_tokens(self, body: dict[str, Any]) -> int | None:
        return self._call("count_tokens", (body,))  # type: ignore[no-any-return]

    def generate_image(self, job: ImageJob, sink: ProgressSink) -> ImageResult:
        return self._call("generate_image", (job,), sink, 1 if self.slots else 0)  # type: ignore[no-any-return]

    def transcribe(self, audio: bytes, *, language: str | None = None, prompt: str | None = None,
                   temperature: float = 0.0, vad_filter: bool = False) -> Transcription:
        return self._call("transcribe", (audio, language, prompt, temperature, vad_filter))  # type: ignore[no-any-return]

    def speak(self, text: str, *, voice: str, speed: float = 1.0, language: str | None = None,
              sink: AudioSink) -> Speech:
        return self._call("speak", (text, voice, speed, language), sink)  # type: ignore[no-any-return]

    @property
    def voices(self) -> tuple[str, ...]:
        return self._call("voices", ())  # type: ignore[no-any-return]

    def detect_speech(self, audio: bytes, *, rate: int = 16000, threshold: float = 0.5,
                      min_silence_ms: int = 100, speech_pad_ms: int = 30) -> list[SpeechSegment]:
        return self._call("detect_speech", (audio, rate, threshold, min_silence_ms,  # type: ignore[no-any-return]
                                            speech_pad_ms))

    def kill(self, reason: str) -> bool:
        process = self._process
        if process is None or process.dead:
            return True
        process.kill_reason = reason
        try:
            process.popen.kill()
        except OSError:
            pass
        return True

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            process = self._process
        if process is None:
            return
        try:
            process.channel.send(("close",))
        except OSError:
            pass
        try:
            process.popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            log.warning("model %s: its worker did not stop within 15s; killing it", self.name)
            process.popen.kill()
            process.popen.wait()
        process.stderr_done.wait(2)

    # Calls ----------------------------------------------------------------------

    def _call(self, kind: str, args: tuple[Any, ...], sink: ChunkSink | None = None, need: int = 0) -> Any:
        with self._cond:
            self._waiting += 1
            try:
                while True:
                    if self._closing:
                        raise EngineStopped(self.name, " (the model was unloaded)")
                    process = self._process
                    if process is None or process.dead:
                        # Not started on the dead worker: run on a fresh one.
                        self._process = process = self._restart()
                    if need == 0 or self._busy + need <= (self.slots or need) or self._busy == 0:
                        break
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._busy += need
            call_id = next(self._ids)
            call = _Call(sink)
            process.calls[call_id] = call
        try:
            try:
                process.channel.send((kind, call_id, *args))
            except OSError:
                pass  # the worker is gone; its reader fails the call
            call.done.wait()
        finally:
            with self._cond:
                self._busy -= need
                process.calls.pop(call_id, None)
                self._cond.notify_all()
        if call.error is not None:
            raise call.error
        return call.result

    def _restart(self) -> _Process:
        log.info("model %s: starting a fresh worker (the last one ended)", self.name)
        try:
            return self._start()
        except ModelLoadError as exc:
            raise EngineStopped(self.name, f"; restarting it failed: {exc}") from exc

    # The process ----------------------------------------------------------------

    def _start(self) -> _Process:
        started = time.monotonic()
        spare = self._spares.take(self.engine_name) if self._spares is not None else None
        process = spare if isinstance(spare, _Process) else _spawn(self._spawner)
        process.engine_lines = []  # a spare's import-time lines say nothing about this load
        popen = process.popen
        try:
            process.channel.send(("load", self.engine_name, self.options, logging.getLogger().getEffectiveLevel()))
        except OSError:
            pass
        reply = process.channel.recv()
        while reply is not None and reply[0] in ("log", "prepared"):
            if reply[0] == "log":
                _relog(reply)
            reply = process.channel.recv()
        if reply is None or reply[0] not in ("ready", "load_error"):
            process.dead = True
            code = _wait(popen)
            process.stderr_done.wait(2)
            how = describe_exit(code)
            self._log_death(process, how, "while loading")
            process.channel.close()
            said = _last_assert(process.lines)
            raise EngineDied(f"{self.options.model_path.name}: its engine {how} while loading"
                             + (f" ({said})" if said else "") + "; the server log has the engine's last lines")
        if reply[0] == "load_error":
            _, message, from_engine = reply
            process.channel.close()
            _wait(popen)
            process.stderr_done.wait(2)
            if from_engine:
                from lokal.engines.llamacpp import _load_failure

                reason = _load_failure(process.engine_lines, str(self.options.model_path.parent))
                if reason:
                    message = f"{self.options.model_path.name} failed to load: {reason}"
            raise ModelLoadError(message)
        _, self.slots, self._dimensions = reply
        process.loading = False
        process.engine_lines = []
        log.debug("model %s: worker %d ready in %.1fs%s", self.name, popen.pid, time.monotonic() - started,
                  " (a spare, started ahead)" if spare is not None else "")
        threading.Thread(target=self._read, args=(process,), name="lokal-worker", daemon=True).start()
        return process

    def _read(self, process: _Process) -> None:
        """Hand the worker's answers to their calls until it ends."""
        channel = process.channel
        calls = process.calls
        while True:
            message = channel.recv()
            if message is None:
                break
            tag, call_id = message[0], message[1]
            if tag == "log":
                _relog(message)
                continue
            call = calls.get(call_id)
            if call is None:
                continue
            if tag == "c":
                if call.stopped or call.sink is None:
                    continue
                try:
                    stop = call.sink(message[2])
                except Exception:  # noqa: BLE001 - as in-process: a failing sink stops the stream
                    stop = True
                if stop:
                    call.stopped = True
                    try:
                        channel.send(("x", call_id))
                    except OSError:
                        pass
            elif tag == "d":
                call.result = message[2]
                call.done.set()
            elif tag == "e":
                call.error = _error(message[2])
                call.done.set()
        self._ended(process)

    def _ended(self, process: _Process) -> None:
        with self._cond:
            process.dead = True
            expected = self._closing
            self._cond.notify_all()
        code = _wait(process.popen)
        process.stderr_done.wait(2)
        process.channel.close()
        running = [call for call in list(process.calls.values()) if not call.done.is_set()]
        if expected and code == 0:
            for call in running:
                call.error = EngineStopped(self.name, " (the model was unloaded)")
                call.done.set()
            return
        how = describe_exit(code)
        if process.kill_reason:
            how = f"was killed by lokal ({process.kill_reason})"
        self._log_death(process, how, f"with {len(running)} request(s) running")
        # The pool hears of the crash before the requests end, so that it knows of it
        # when their leases come back.
        if not expected and self._on_exit is not None:
            try:
                self._on_exit(f"its engine process {how}")
            except Exception:  # noqa: BLE001 - the pool is gone (shutdown)
                log.debug("crash listener failed", exc_info=True)
        for call in running:
            call.error = EngineStopped(self.name)
            call.done.set()

    def _log_death(self, process: _Process, how: str, when: str) -> None:
        lines = list(process.lines)
        tail = lines[-TAIL_LINES:]
        # An assert or error further up says more than the lines after it.
        tail = [line for line in lines[:-TAIL_LINES] if _IMPORTANT.search(line)][-5:] + tail
        log.error("model %s: worker %d %s %s; last engine log lines:\n%s", self.name, process.popen.pid,
                  how, when, "\n".join("  " + line for line in tail) or "  (none)")

def _read_stderr(process: _Process) -> None:
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


_IMPORTANT = re.compile(r"GGML_ASSERT|GGML_ABORT|error|failed|terminate", re.IGNORECASE)


def _last_assert(lines: collections.deque[str]) -> str:
    """What the engine asserted before it aborted, without source paths."""
    for line in reversed(lines):
        at = line.find("GGML_ASSERT")
        if at >= 0:
            return line[at:]
    return ""


def _relog(message: tuple[Any, ...]) -> None:
    """A worker's log record, logged here."""
    _, levelno, name, text = message
    logging.getLogger(name).log(levelno, "%s", text)


def _slots_for(body: dict[str, Any], slots: int | None) -> int:
    if not slots:
        return 0
    n = body.get("n")
    return max(1, min(n if isinstance(n, int) else 1, slots))


def _wait(popen: subprocess.Popen[bytes]) -> int | None:
    try:
        return popen.wait(timeout=10)
    except subprocess.TimeoutExpired:
        popen.kill()
        try:
            return popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            return None


def _error(payload: tuple[Any, ...]) -> BaseException:
    if payload[0] == "engine":
        _, status, message, kind, details = payload
        error = EngineError(status, message, kind, details)
        error.param = details.get("param") if isinstance(details, dict) else None
        return error
    _, name, message = payload
    return RuntimeError(f"the engine raised {name}: {message}")


# The worker process ---------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the server died before the signal was set up
        os._exit(1)


class _ToServer(logging.Handler):
    """The worker's log records go to the server over the channel (fd 2 is the engine's:
    records written there would interleave with its lines)."""

    def __init__(self, channel: _Channel) -> None:
        super().__init__()
        self.channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            self.channel.send(("log", record.levelno, record.name, text))
        except Exception:  # noqa: BLE001 - logging must not fail a call
            pass


def _serve(engine: Engine, channel: _Channel, message: tuple[Any, ...], cancelled: set[int]) -> None:
    kind, call_id, *args = message

    def sink(chunk: Any) -> bool:
        if call_id in cancelled:
            return True
        channel.send(("c", call_id, chunk))
        return call_id in cancelled

    try:
        if kind in ("chat", "complete", "infill", "generate_image"):
            result: Any = getattr(engine, kind)(args[0], sink)
        elif kind == "speak":
            text, voice, speed, language = args
            result = engine.speak(text, voice=voice, speed=speed, language=language, sink=sink)
        elif kind == "voices":
            result = engine.voices
        elif kind == "detect_speech":
            audio, rate, threshold, silence, pad = args
            result = engine.detect_speech(audio, rate=rate, threshold=threshold, min_silence_ms=silence,
                                          speech_pad_ms=pad)
        elif kind == "embed":
            result = engine.embed(*args)
        elif kind == "rerank":
            result = engine.rerank(*args)
        elif kind == "transcribe":
            audio, language, prompt, temperature, vad_filter = args
            result = engine.transcribe(audio, language=language, prompt=prompt, temperature=temperature,
                                       **({"vad_filter": True} if vad_filter else {}))
        elif kind == "count_tokens":
            result = engine.count_tokens(*args)
        elif kind == "text_op":
            result = engine.text_op(*args)
        else:
            raise ValueError(f"unknown call {kind!r}")
        reply: tuple[Any, ...] = ("d", call_id, result)
    except EngineError as exc:
        reply = ("e", call_id, ("engine", exc.status, exc.message, exc.kind, exc.details))
    except Exception as exc:  # noqa: BLE001 - handed to the server
        log.exception("model call %s failed", kind)
        reply = ("e", call_id, ("other", type(exc).__name__, str(exc)))
    finally:
        cancelled.discard(call_id)
    try:
        channel.send(reply)
    except OSError:
        os._exit(0)  # the server is gone


def _prepare(engine_name: str, background: bool) -> None:
    """Import an engine's libraries; in the background on a thread of lowered priority (Linux
    sets priorities per thread), so that a spare warming up while the server serves takes the
    CPU only when the requests leave it. (At start-up nothing is served yet: full priority.)"""
    from lokal.engines.factory import prepare_engine

    def work() -> None:
        if background:
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
            except (OSError, AttributeError):
                pass
        try:
            prepare_engine(engine_name)
        except Exception:  # noqa: BLE001 - the load imports again and reports what fails
            log.debug("preparing the %s engine failed", engine_name, exc_info=True)

    thread = threading.Thread(target=work, name="lokal-prepare", daemon=True)
    thread.start()
    thread.join()


def main(argv: list[str]) -> int:
    fd, parent = int(argv[0]), int(argv[1])
    _die_with_parent(parent)
    engine_log.passthrough()  # fd 2 is the server's pipe: even an abort's last words get there
    channel = _Channel(socket.socket(fileno=fd))
    logging.root.addHandler(_ToServer(channel))
    message = channel.recv()
    if message is not None and message[0] == "prepare":  # a spare: import now, load later
        _, engine_name, level, background = message
        logging.root.setLevel(level)
        _prepare(engine_name, background)
        channel.send(("prepared",))
        message = channel.recv()
    if message is None or message[0] != "load":
        return 1
    _, engine_name, options, level = message
    logging.root.setLevel(level)
    from lokal.engines.factory import create_engine

    try:
        engine = create_engine(engine_name, options)
    except ModelLoadError as exc:
        from_engine = isinstance(exc.__cause__, (RuntimeError, ValueError))
        channel.send(("load_error", str(exc), from_engine))
        return 0
    except Exception as exc:  # noqa: BLE001 - reported as a load failure
        channel.send(("load_error", f"{options.model_path.name} failed to load: "
                                    f"{type(exc).__name__}: {exc}", False))
        return 0
    channel.send(("ready", engine.slots, engine.dimensions))
    cancelled: set[int] = set()
    while True:
        message = channel.recv()
        if message is None:  # the server is gone
            os._exit(0)
        if message[0] == "x":
            cancelled.add(message[1])
        elif message[0] == "close":
            break
        else:
            threading.Thread(target=_serve, args=(engine, channel, message, cancelled),
                             name="lokal-call", daemon=True).start()
    engine.close()
    channel.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
