"""The worker protocol's wire: length-prefixed pickles over a socket pair, and errors as
they cross it (an `EngineError` keeps its status, kind and details; anything else becomes a
RuntimeError naming the exception)."""

from __future__ import annotations

import logging
import pickle
import socket
import struct
import threading
from typing import Any

from lokal.errors import EngineError

HEADER = struct.Struct("!I")


class Channel:
    """Length-prefixed pickles over a stream socket; send is thread-safe."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._reader = sock.makefile("rb")
        self._lock = threading.Lock()

    def send(self, message: Any) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            self._sock.sendall(HEADER.pack(len(data)) + data)

    def recv(self) -> Any:
        """The next message; None when the other end has gone."""
        try:
            head = self._reader.read(HEADER.size)
            if len(head) < HEADER.size:
                return None
            (size,) = HEADER.unpack(head)
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


def error_payload(exc: BaseException) -> tuple[Any, ...]:
    """An exception raised by an engine call, as the worker sends it."""
    if isinstance(exc, EngineError):
        return ("engine", exc.status, exc.message, exc.kind, exc.details)
    return ("other", type(exc).__name__, str(exc))


def error_from(payload: tuple[Any, ...]) -> BaseException:
    """The exception a worker's error payload stands for, raised in the server."""
    if payload[0] == "engine":
        _, status, message, kind, details = payload
        error = EngineError(status, message, kind, details)
        error.param = details.get("param") if isinstance(details, dict) else None
        return error
    _, name, message = payload
    return RuntimeError(f"the engine raised {name}: {message}")


def relog(message: tuple[Any, ...]) -> None:
    """A worker's log record, logged here."""
    _, levelno, name, text = message
    logging.getLogger(name).log(levelno, "%s", text)
