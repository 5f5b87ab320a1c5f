"""Downloads read the socket in wide pieces (lokal.transfer.wide), through the
same client the downloader uses, against the loopback fixture."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpcore

from lokal.transfer.downloader import Downloader
from lokal.transfer.wide import READ_SIZE, WideBackend, WideStream, WideTransport
from tests.install.conftest import Fixture, blob, policy_for


class Recording(httpcore.NetworkBackend):
    """httpcore's socket backend, noting the size of every read asked of its streams."""

    def __init__(self) -> None:
        self.inner = httpcore.SyncBackend()
        self.asked: list[int] = []

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None, socket_options: Any = None) -> httpcore.NetworkStream:
        stream = self.inner.connect_tcp(host, port, timeout, local_address, socket_options)
        asked = self.asked

        class Noted(httpcore.NetworkStream):
            def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
                asked.append(max_bytes)
                return stream.read(max_bytes, timeout)

            def write(self, buffer: bytes, timeout: float | None = None) -> None:
                stream.write(buffer, timeout)

            def close(self) -> None:
                stream.close()

            def get_extra_info(self, info: str) -> Any:
                return stream.get_extra_info(info)

        return Noted()


def test_the_policy_client_is_wide_and_a_download_is_whole(fixture: Fixture, tmp_path: Path) -> None:
    data = blob(3 << 20)
    url = fixture.add("/big.bin", data)
    policy = policy_for(fixture)
    with policy.client() as client:
        assert isinstance(client._transport, WideTransport)
        backend = client._transport._pool._network_backend
        assert isinstance(backend, WideBackend), "httpx rebuilt its pool: the downloader reads 64 KiB again"
    target = tmp_path / "big.bin"
    Downloader(policy).fetch(url, target, sha256=hashlib.sha256(data).hexdigest())
    assert target.read_bytes() == data


def test_wide_streams_ask_the_socket_for_read_size(fixture: Fixture) -> None:
    data = blob(2 << 20)
    url = fixture.add("/wide.bin", data)
    recording = Recording()
    with httpcore.ConnectionPool(network_backend=WideBackend(recording)) as pool:
        answer = pool.request("GET", url)
    assert answer.status == 200 and answer.content == data
    assert recording.asked and min(recording.asked) >= READ_SIZE, recording.asked[:5]
    # httpcore alone asks for 64 KiB: without the wrapper the same download takes more reads.
    plain = Recording()
    with httpcore.ConnectionPool(network_backend=plain) as pool:
        assert pool.request("GET", url).content == data
    assert max(plain.asked) < READ_SIZE


def test_tls_streams_read_as_httpcore_reads_them() -> None:
    """Over TLS a read returns one record whatever it asks for: no wide reads there."""

    class Inner(httpcore.NetworkStream):
        def __init__(self) -> None:
            self.asked: list[int] = []
            self.tls: Inner | None = None

        def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
            self.asked.append(max_bytes)
            return b""

        def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                      timeout: float | None = None) -> httpcore.NetworkStream:
            self.tls = Inner()
            return self.tls

    plain = Inner()
    wide = WideStream(plain)
    wide.read(65536)
    assert plain.asked == [READ_SIZE]
    secure = wide.start_tls(ssl_context=None, server_hostname="example.org")
    assert secure is plain.tls and not isinstance(secure, WideStream)
    secure.read(65536)
    assert plain.tls is not None and plain.tls.asked == [65536]
