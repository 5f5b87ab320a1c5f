"""A real loopback HTTP fixture for installs: gallery indexes, configs, model files and a
fake Hugging Face API, able to cut a response, refuse Range, stall, lie, or go slowly."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lokal.transfer.netguard import OutboundPolicy


@dataclass
class Behaviour:
    cut_after: int | None = None  # close the connection after this many body bytes
    cut_times: int = 1  # ... for this many responses
    no_range: bool = False  # answer Range requests with the whole file (200)
    stall_after: int | None = None  # go silent after this many bytes
    stall_seconds: float = 0.0
    stall_times: int = 1
    rate: int | None = None  # bytes per second
    redirect: str | None = None  # answer 302 to this location
    wrong: bytes | None = None  # serve these bytes instead
    declare: int | None = None  # Content-Length to announce instead of the real one


@dataclass
class State:
    files: dict[str, bytes] = field(default_factory=dict)
    behaviour: dict[str, Behaviour] = field(default_factory=dict)
    served: dict[str, int] = field(default_factory=dict)  # body bytes sent per path
    hits: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range)
    hf: dict[str, dict[str, bytes]] = field(default_factory=dict)  # repo -> path -> bytes
    lock: threading.Lock = field(default_factory=threading.Lock)

    def gets(self, path: str) -> int:
        return sum(1 for m, p, _ in self.hits if m == "GET" and p == path)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: State

    def log_message(self, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(head=False)

    def _answer(self, head: bool) -> None:
        state = self.state
        path = self.path.split("?", 1)[0]
        with state.lock:
            state.hits.append((self.command, path, self.headers.get("Range")))
        if path.startswith("/api/models/") and "/tree/" in path:
            repo = path.removeprefix("/api/models/").split("/tree/")[0]
            if repo not in state.hf:
                return self._plain(404, b'{"error": "Repository not found"}')
            listing = [{"type": "file", "path": p, "size": len(d), "oid": "x",
                        "lfs": {"oid": hashlib.sha256(d).hexdigest(), "size": len(d)}}
                       for p, d in state.hf[repo].items()]
            return self._plain(200, json.dumps(listing).encode(), head)
        data = state.files.get(path)
        for repo, files in state.hf.items():
            prefix = f"/{repo}/resolve/main/"
            if path.startswith(prefix) and path.removeprefix(prefix) in files:
                data = files[path.removeprefix(prefix)]
        b = state.behaviour.get(path, Behaviour())
        if b.redirect:
            self.send_response(302)
            self.send_header("Location", b.redirect)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if data is None:
            return self._plain(404, b"not found", head)
        if b.wrong is not None:
            data = b.wrong
        etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        start = 0
        rng = self.headers.get("Range")
        if rng and not b.no_range and rng.startswith("bytes=") and \
                (self.headers.get("If-Range") in (None, etag)):
            start = int(rng[6:].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = memoryview(data)[start:]
        self.send_header("Content-Length", str(b.declare if b.declare is not None else len(body)))
        self.send_header("ETag", etag)
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if head:
            return
        limit = len(body)
        if b.cut_after is not None and b.cut_times > 0:
            with state.lock:
                b.cut_times -= 1
            limit = min(limit, b.cut_after)
        sent = 0
        step = 1 << 16
        try:
            while sent < limit:
                if b.stall_after is not None and b.stall_times > 0 and sent >= b.stall_after:
                    with state.lock:
                        b.stall_times -= 1
                    time.sleep(b.stall_seconds)
                    self.close_connection = True
                    return
                chunk = body[sent:min(limit, sent + step)]
                self.wfile.write(chunk)
                sent += len(chunk)
                with state.lock:
                    state.served[path] = state.served.get(path, 0) + len(chunk)
                if b.rate:
                    time.sleep(len(chunk) / b.rate)
        except (BrokenPipeError, ConnectionResetError):
            pass
        if limit < len(body):
            self.close_connection = True

    def _plain(self, status: int, body: bytes, head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)


class Fixture:
    def __init__(self) -> None:
        self.state = State()
        handler = type("H", (Handler,), {"state": self.state})
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add(self, path: str, data: bytes, **behaviour: object) -> str:
        self.state.files[path] = data
        if behaviour:
            self.state.behaviour[path] = Behaviour(**behaviour)  # type: ignore[arg-type]
        return self.base + path

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fixture() -> Iterator[Fixture]:
    fx = Fixture()
    yield fx
    fx.close()


def policy_for(fx: Fixture, **kw: object) -> OutboundPolicy:
    kw.setdefault("stall_timeout", 5.0)
    return OutboundPolicy(allowed_hosts=frozenset({"127.0.0.1"}), hf_endpoint=fx.base, **kw)  # type: ignore[arg-type]


def blob(size: int, seed: int = 0) -> bytes:
    """size deterministic bytes that compress badly."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under folder (hidden ones too) and its bytes."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else b"<link>")
            for p in sorted(folder.rglob("*")) if p.is_file() or p.is_symlink()}
