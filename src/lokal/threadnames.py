"""Thread names the operating system sees (Linux `comm`), so lokal's own CPU time per
token can be told from the engine's (bench/chat.py reads /proc/PID/task/*/comm).

Threads inherit their creator's name: the engine's threads are created while a model
loads, on a thread named `ENGINE` for that moment, and keep that name; lokal's own
threads are named `lokal...`. Elsewhere than Linux this does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
from collections.abc import Iterator

ENGINE = "llama-engine"
_PR_SET_NAME, _PR_GET_NAME = 15, 16


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


_LIBC = _libc()


def set_name(name: str) -> None:
    """Name the calling thread (15 bytes at most, as the kernel keeps)."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


def get_name() -> str:
    if _LIBC is None:
        return ""
    buffer = ctypes.create_string_buffer(16)
    _LIBC.prctl(_PR_GET_NAME, buffer, 0, 0, 0)
    return buffer.value.decode(errors="replace")


@contextlib.contextmanager
def named(name: str) -> Iterator[None]:
    """The calling thread carries name for the block (threads it starts keep it)."""
    before = get_name()
    set_name(name)
    try:
        yield
    finally:
        set_name(before)
