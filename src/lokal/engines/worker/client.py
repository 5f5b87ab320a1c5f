"""The server's side of a worker: `WorkerEngine`, an `Engine` whose methods are calls to
its worker process (slots counted here, a dead worker's waiting calls run on a fresh one),
and `WorkerFactory`, the pool's engine factory."""

from __future__ import annotations

import itertools
import logging
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from lokal.engines.base import (AudioSink, Engine, ChunkSink, EngineDied, Embeddings, ImageJob, ImageResult,
                                LoadOptions, ModelLoadError, ProgressSink, Scores, Speech, SpeechSegment,
                                Transcription)
from lokal.engines.spares import SpareWorkers
from lokal.engines.worker.process import (Call, Spawner, WorkerProcess, describe_exit, last_assert, log_death,
                                          spawn, spawn_spare, wait_for_exit)
from lokal.engines.worker.protocol import error_from, relog
from lokal.errors import EngineStopped

log = logging.getLogger(__name__)


class WorkerFactory:
    """A pool engine factory: every engine in a worker process of its own; with spares on,
    a load of a kind of engine takes the worker started ahead for it (`lokal.engines.spares`)."""

    def __init__(self, spares: bool = False) -> None:
        self.spawner = Spawner()
        self.spares = (SpareWorkers(lambda kind, background: spawn_spare(self.spawner, kind, background))
                       if spares else None)

    def __call__(self, engine_name: str, options: LoadOptions) -> Engine:
        return WorkerEngine(engine_name, options, spawner=self.spawner, spares=self.spares)


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
        self._process: WorkerProcess | None = None
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
            call = Call(sink)
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

    def _restart(self) -> WorkerProcess:
        log.info("model %s: starting a fresh worker (the last one ended)", self.name)
        try:
            return self._start()
        except ModelLoadError as exc:
            raise EngineStopped(self.name, f"; restarting it failed: {exc}") from exc

    # The process ----------------------------------------------------------------

    def _start(self) -> WorkerProcess:
        started = time.monotonic()
        spare = self._spares.take(self.engine_name) if self._spares is not None else None
        process = spare if isinstance(spare, WorkerProcess) else spawn(self._spawner)
        process.engine_lines = []  # a spare's import-time lines say nothing about this load
        popen = process.popen
        try:
            process.channel.send(("load", self.engine_name, self.options, logging.getLogger().getEffectiveLevel()))
        except OSError:
            pass
        reply = process.channel.recv()
        while reply is not None and reply[0] in ("log", "prepared"):
            if reply[0] == "log":
                relog(reply)
            reply = process.channel.recv()
        if reply is None or reply[0] not in ("ready", "load_error"):
            process.dead = True
            code = wait_for_exit(popen)
            process.stderr_done.wait(2)
            how = describe_exit(code)
            log_death(self.name, process, how, "while loading")
            process.channel.close()
            said = last_assert(process.lines)
            raise EngineDied(f"{self.options.model_path.name}: its engine {how} while loading"
                             + (f" ({said})" if said else "") + "; the server log has the engine's last lines")
        if reply[0] == "load_error":
            _, message, from_engine = reply
            process.channel.close()
            wait_for_exit(popen)
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

    def _read(self, process: WorkerProcess) -> None:
        """Hand the worker's answers to their calls until it ends."""
        channel = process.channel
        calls = process.calls
        while True:
            message = channel.recv()
            if message is None:
                break
            tag, call_id = message[0], message[1]
            if tag == "log":
                relog(message)
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
                call.error = error_from(message[2])
                call.done.set()
        self._ended(process)

    def _ended(self, process: WorkerProcess) -> None:
        with self._cond:
            process.dead = True
            expected = self._closing
            self._cond.notify_all()
        code = wait_for_exit(process.popen)
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
        log_death(self.name, process, how, f"with {len(running)} request(s) running")
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


def _slots_for(body: dict[str, Any], slots: int | None) -> int:
    if not slots:
        return 0
    n = body.get("n")
    return max(1, min(n if isinstance(n, int) else 1, slots))
