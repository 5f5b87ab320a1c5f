"""The web UI at /ui: a few static files from this package, nothing fetched elsewhere.

The page talks to lokal only through its public HTTP API (the OpenAI routes, LocalAI's
model management, lokal's /lokal/models), so the files themselves hold nothing secret
and are served without an API key (`OPEN_PATHS`): the page asks for the key and sends
it on its own calls. Files are read once at import, gzipped when the client accepts
it, revalidated by ETag, and sent with a Content-Security-Policy that allows scripts,
styles and connections to this origin only (model output never runs as script).
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from importlib import resources

from fastapi import APIRouter, Request, Response

from lokal.errors import NotFound

router = APIRouter(include_in_schema=False)

PREFIX = "/ui"
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "media-src 'self' blob:; connect-src 'self'; form-action 'none'; base-uri 'none'; "
       "frame-ancestors 'none'")


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes
    media_type: str
    etag: str


def _load() -> dict[str, Asset]:
    assets = {}
    for item in resources.files(__package__).joinpath("static").iterdir():
        suffix = "." + item.name.rsplit(".", 1)[-1]
        if item.is_file() and suffix in _TYPES:
            body = item.read_bytes()
            assets[item.name] = Asset(body, gzip.compress(body, 9, mtime=0), _TYPES[suffix],
                                      '"' + hashlib.sha256(body).hexdigest()[:20] + '"')
    return assets


ASSETS = _load()
#: Paths the auth middleware lets through without a key (the page asks for one itself).
OPEN_PATHS = (PREFIX, PREFIX + "/", *(f"{PREFIX}/{name}" for name in ASSETS))


def _serve(request: Request, name: str) -> Response:
    asset = ASSETS.get(name)
    if asset is None:
        raise NotFound(f"There is no file {name!r} in the web UI.")
    headers = {"ETag": asset.etag, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
               "Referrer-Policy": "no-referrer", "Vary": "Accept-Encoding"}
    if asset.media_type.startswith("text/html"):
        headers["Content-Security-Policy"] = CSP
        headers["X-Frame-Options"] = "DENY"
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    body = asset.body
    if "gzip" in request.headers.get("accept-encoding", "").lower():
        body = asset.gzipped
        headers["Content-Encoding"] = "gzip"
    return Response(body, media_type=asset.media_type, headers=headers)


@router.get(PREFIX)
@router.get(PREFIX + "/")
async def index(request: Request) -> Response:
    return _serve(request, "index.html")


@router.get(PREFIX + "/{name}")
async def asset(name: str, request: Request) -> Response:
    return _serve(request, name)
