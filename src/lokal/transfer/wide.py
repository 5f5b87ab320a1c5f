"""An httpx transport that reads the socket in wide pieces.

httpcore asks its socket for at most 64 KiB per read, and every read is a round
of Python (h11 parses it, an event, a copy, the downloader's write and hash). For
a multi-gigabyte model that round is most of lokal's CPU per byte: reading up to
`READ_SIZE` at once, whenever that much is waiting, took bench/download.py from
0.77x curl's throughput to parity on loopback. Nothing else changes: the stream
returns what the socket has (a small answer is still one small read), HTTP framing
is h11's as before, and TLS connections read as httpcore reads them (see
`WideStream.start_tls`).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

READ_SIZE = 1 << 20


class WideStream(httpcore.NetworkStream):
    """A network stream whose reads ask for at least READ_SIZE bytes."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max(max_bytes, READ_SIZE), timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        # Over TLS a read returns one record (16 KiB at most) whatever it asks for, and
        # Python allocates the whole asked size first: wide reads only cost there (a
        # 256 MiB loopback download fell from 0.75x curl to 0.45x). httpcore's own reads.
        return self._inner.start_tls(ssl_context, server_hostname, timeout)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class WideBackend(httpcore.NetworkBackend):
    """httpcore's own socket backend, its streams wrapped in WideStream."""

    def __init__(self, inner: httpcore.NetworkBackend | None = None) -> None:
        self._inner = inner or httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        return WideStream(self._inner.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        return WideStream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class WideTransport(httpx.HTTPTransport):
    """httpx's transport (no proxy, no environment, httpx's default limits) over a WideBackend pool.

    httpx takes no network backend, so the pool it built is replaced by an equal one
    that has it (tests/install/test_wide.py checks that it still reads wide)."""

    def __init__(self) -> None:
        super().__init__(trust_env=False)
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)
        self._pool = httpcore.ConnectionPool(ssl_context=httpx.create_ssl_context(trust_env=False),
                                             max_connections=limits.max_connections,
                                             max_keepalive_connections=limits.max_keepalive_connections,
                                             keepalive_expiry=limits.keepalive_expiry,
                                             network_backend=WideBackend())

