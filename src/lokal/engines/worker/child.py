"""The worker program (`python -m lokal.engines.worker`): it dies with the server, sends its
log records over the channel, imports an engine ahead when it is a spare, loads the model it
is sent and serves each call on a thread of its own, streaming chunks back."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import sys
import threading
from typing import Any

from lokal.engines import engine_log
from lokal.engines.base import Engine, ModelLoadError
from lokal.engines.worker.protocol import Channel, error_payload
from lokal.errors import EngineError

log = logging.getLogger(__name__)


def die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the server died before the signal was set up
        os._exit(1)


class ToServer(logging.Handler):
    """The worker's log records go to the server over the channel (fd 2 is the engine's:
    records written there would interleave with its lines)."""

    def __init__(self, channel: Channel) -> None:
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


def _serve(engine: Engine, channel: Channel, message: tuple[Any, ...], cancelled: set[int]) -> None:
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
        reply = ("e", call_id, error_payload(exc))
    except Exception as exc:  # noqa: BLE001 - handed to the server
        log.exception("model call %s failed", kind)
        reply = ("e", call_id, error_payload(exc))
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
    die_with_parent(parent)
    engine_log.passthrough()  # fd 2 is the server's pipe: even an abort's last words get there
    channel = Channel(socket.socket(fileno=fd))
    logging.root.addHandler(ToServer(channel))
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
