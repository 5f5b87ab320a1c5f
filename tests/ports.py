"""A free loopback port, for the tests and the benches (`bench/_http.py` imports it): the one
place that asks the kernel for one. Importing this pulls in nothing but `socket`."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port on host that nothing listens on now (the kernel's pick; free until someone binds it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
