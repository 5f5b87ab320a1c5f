"""`GET /` from a browser goes to the web UI; anyone else gets what `/` answers otherwise.

A browser is a request whose Accept header names text/html explicitly with the highest
quality among its entries (browsers send `text/html,...,*/*;q=0.8`; curl, SDKs and health
probes send `*/*` or `application/json`). This runs before the auth middleware, so a
browser reaches the page (which asks for a key) even when API keys are set.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


def prefers_html(accept: str) -> bool:
    best, html = 0.0, 0.0
    for part in accept.split(","):
        fields = [f.strip() for f in part.split(";")]
        media = fields[0].lower()
        if not media:
            continue
        q = 1.0
        for param in fields[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        best = max(best, q)
        if media == "text/html":
            html = q
    return html > 0 and html >= best


class BrowserRedirectMiddleware:
    def __init__(self, app: ASGIApp, target: str = "/ui/") -> None:
        self.app = app
        self.target = target

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope["path"] == "/" and scope["method"] in ("GET", "HEAD")
                and prefers_html(dict(scope["headers"]).get(b"accept", b"").decode("latin-1"))):
            await send({"type": "http.response.start", "status": 307,
                        "headers": [(b"location", self.target.encode()), (b"content-length", b"0"),
                                    (b"vary", b"Accept")]})
            await send({"type": "http.response.body", "body": b""})
            return
        await self.app(scope, receive, send)
