"""ASGI middleware: path and content-type normalizing, body size limit, decompression
(API keys: `lokal.api.keys`).

Each answers bad requests itself in the OpenAI error envelope, before any route
runs, so a rejected request costs nothing and never reaches a model.
"""

from __future__ import annotations

import io
import re
import zlib
from collections.abc import Iterable

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lokal.api.errors import envelope_of, error_bytes

_REPEATED_V1 = re.compile(r"^(/v1)(/v1)+(?=/|$)")
_SLASHES = re.compile(r"//+")


async def send_error(send: Send, scope: Scope, status: int, message: str,
                     headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """An error answered before any route runs, in the envelope of the path's API family."""
    path = scope.get("path", "")
    body = error_bytes(status, message, envelope_of(scope.get("app"), path))
    if scope["type"] == "websocket":  # a refused upgrade: the same answer, where the server can send one
        if "websocket.http.response" in scope.get("extensions", {}):
            await send({"type": "websocket.http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/json"), *headers]})
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
        return
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


#: Set in the scope of a HEAD request answered as GET, for a route that must tell the two apart.
HEAD_KEY = "lokal.head"


def was_head(scope: Scope) -> bool:
    return bool(scope.get(HEAD_KEY))


class NormalizeMiddleware:
    """`/v1/v1/x` is `/v1/x` (a base URL that already ended in /v1), `//x` is `/x`
    (one that ended in a slash), HEAD is answered as GET without the body (health
    checks such as `curl -I`; the HTTP server drops the body), and a JSON body
    is JSON whatever Content-Type says (curl -d sends form encoding)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            fixed = _REPEATED_V1.sub(r"\1", _SLASHES.sub("/", path))
            if fixed != path:
                scope = dict(scope, path=fixed, raw_path=fixed.encode())
            if scope["method"] == "HEAD":
                scope = dict(scope, method="GET", **{HEAD_KEY: True})
            if scope["method"] in ("POST", "PUT", "PATCH"):
                headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
                content_type = dict(scope["headers"]).get(b"content-type", b"")
                if not content_type.startswith(b"multipart/"):
                    scope = dict(scope, headers=[*headers, (b"content-type", b"application/json")])
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuse bodies over the limit with 413, before reading them whole. Uploads to the
    `exempt` path prefixes (POST) are streamed to disk by their routes, which apply
    their own limit (Ollama's blobs: MAX_DOWNLOAD_SIZE)."""

    def __init__(self, app: ASGIApp, limit_bytes: int, exempt: Iterable[str] = ()) -> None:
        self.app = app
        self.limit = limit_bytes
        self.exempt = tuple(exempt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self.exempt and scope["method"] == "POST"
                                       and scope["path"].startswith(self.exempt)):
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await send_error(send, scope, 413, self._message())
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise HTTPException(413, self._message())
            return message

        await self.app(scope, limited, send)

    def _message(self) -> str:
        return (f"The request body is larger than the server's limit of "
                f"{self.limit // (1024 * 1024)} MB (UPLOAD_LIMIT).")


class DecompressMiddleware:
    """Request bodies sent with `Content-Encoding: gzip` or `zstd` (Codex CLI compresses
    its Responses requests) are decompressed before any route reads them, the upload
    limit applied to the decompressed size; an encoding lokal cannot read is a 415,
    a corrupt body a 400."""

    def __init__(self, app: ASGIApp, limit_bytes: int) -> None:
        self.app = app
        self.limit = limit_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        encoding = dict(scope["headers"]).get(b"content-encoding", b"").decode("latin-1").strip().lower()
        codings = [c.strip() for c in encoding.split(",") if c.strip() and c.strip() != "identity"]
        if not codings:
            await self.app(scope, receive, send)
            return
        unknown = [c for c in codings if c not in ("gzip", "x-gzip", "zstd", "deflate")]
        if unknown:
            await send_error(send, scope, 415, f"Content-Encoding {', '.join(unknown)} is not supported; "
                             "send the body as is, or compressed with gzip or zstd.")
            return
        chunks: list[bytes] = []
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
        except HTTPException as exc:  # the compressed body alone is over the limit
            await send_error(send, scope, exc.status_code, str(exc.detail))
            return
        body = b"".join(chunks)
        try:
            for coding in reversed(codings):
                body = _decompress(coding, body, self.limit)
        except _TooLarge:
            await send_error(send, scope, 413, f"The request body is larger than the server's limit of "
                             f"{self.limit // (1024 * 1024)} MB (UPLOAD_LIMIT) once decompressed.")
            return
        except Exception as exc:  # noqa: BLE001 - any decoder failure is the client's body
            await send_error(send, scope, 400, f"The request body is not valid {encoding} data: {exc}")
            return
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-encoding", b"content-length")]
        headers.append((b"content-length", str(len(body)).encode()))
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(dict(scope, headers=headers), replay, send)


class _TooLarge(Exception):
    pass


def _decompress(coding: str, data: bytes, limit: int) -> bytes:
    """data decoded, refused past limit bytes without ever holding more than that."""
    if coding == "zstd":
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
        out = io.BytesIO()
        while True:
            piece = reader.read(min(1 << 20, limit + 1))
            if not piece:
                break
            out.write(piece)
            if out.tell() > limit:
                raise _TooLarge()
        return out.getvalue()
    decoder = zlib.decompressobj(zlib.MAX_WBITS | (16 if coding in ("gzip", "x-gzip") else 0))
    out_bytes = decoder.decompress(data, limit + 1)
    if len(out_bytes) > limit or decoder.unconsumed_tail:
        raise _TooLarge()
    if not decoder.eof:
        raise ValueError("the compressed data is truncated")
    return out_bytes
