"""ASGI middleware: path and content-type normalizing, API keys, body size limit.

Each answers bad requests itself in the OpenAI error envelope, before any route
runs, so a rejected request costs nothing and never reaches a model.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lokal.api.errors import error_bytes

_REPEATED_V1 = re.compile(r"^(/v1)(/v1)+(?=/|$)")
_SLASHES = re.compile(r"//+")


async def send_error(send: Send, scope: Scope, status: int, message: str,
                     headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """An error answered before any route runs, in the envelope of the path's API family."""
    body = error_bytes(status, message, scope.get("path", ""))
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


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
                scope = dict(scope, method="GET")
            if scope["method"] in ("POST", "PUT", "PATCH"):
                headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
                content_type = dict(scope["headers"]).get(b"content-type", b"")
                if not content_type.startswith(b"multipart/"):
                    scope = dict(scope, headers=[*headers, (b"content-type", b"application/json")])
        await self.app(scope, receive, send)


class AuthMiddleware:
    """With API keys set, every route but the open ones needs one."""

    def __init__(self, app: ASGIApp, keys: list[str], open_paths: Iterable[str]) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.open_paths = frozenset(open_paths)

    def _presented(self, scope: Scope) -> bytes | None:
        headers = dict(scope["headers"])
        auth = headers.get(b"authorization", b"")
        if auth[:7].lower() == b"bearer ":
            return auth[7:].strip()
        return headers.get(b"x-api-key") or headers.get(b"xi-api-key")

    def _valid(self, key: bytes | None) -> bool:
        if key is None:
            return False
        ok = False
        for expected in self.keys:  # compare with every key: timing says nothing
            ok |= hmac.compare_digest(key, expected)
        return ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        if not self._valid(self._presented(scope)):
            await send_error(send, scope, 401, "Missing or invalid API key. Send 'Authorization: "
                             "Bearer <key>' or 'x-api-key: <key>'.", [(b"www-authenticate", b"Bearer")])
            return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuse bodies over the limit with 413, before reading them whole."""

    def __init__(self, app: ASGIApp, limit_bytes: int) -> None:
        self.app = app
        self.limit = limit_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
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
