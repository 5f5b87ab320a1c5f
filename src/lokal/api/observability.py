"""Request ids, request metrics and the access log, for every HTTP request.

`ObservabilityMiddleware` sits outside the middleware that may answer a request
itself (API keys, body limit), so their 401 and 413 answers get a request id,
are counted and are logged like any other:

- `X-Request-ID`: the client's, when it is a sane id (1-128 characters of
  letters, digits and `-_.:+/=`), else a new one; it comes back on every response
  and is on every log line written while the request is served.
- `lokal_requests_total` / `lokal_request_duration_seconds` by API family, route
  (a route's template, without /v1: hostile URLs cannot grow the label set),
  model (what the request was served by, once known) and status. A client that
  went away before the answer was complete is counted as status 499.
- one access line per request on the `lokal.access` logger (health checks and
  scrapes at debug level, everything else at info).
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from collections.abc import Iterable

from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lokal import logs
from lokal.api.errors import error_response
from lokal.api.family import Families
from lokal.metrics import Metrics

access_log = logging.getLogger("lokal.access")

HEADER = b"x-request-id"
_VALID_ID = re.compile(rb"^[A-Za-z0-9._:+/=-]{1,128}$")
CLIENT_GONE = 499

def request_id(scope: Scope) -> str:
    """The client's id when it is a sane one, else a fresh one."""
    for name, value in scope["headers"]:
        if name == HEADER:
            if _VALID_ID.match(value):
                return value.decode("ascii")
            break
    return uuid.uuid4().hex


class Routes:
    """Route templates, to name the route of a path (also of requests answered before
    routing, such as a 401). /v1/x and /x are one route, named /x."""

    def __init__(self, templates: Iterable[str]) -> None:
        self._compiled = [(compile_path(t)[0], t) for t in dict.fromkeys(templates)]

    def of(self, path: str) -> str:
        bare = path[3:] if path.startswith("/v1/") else path
        for regex, template in self._compiled:
            if regex.match(bare):
                return template
        return "unmatched"


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Iterable[str], families: Families) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = Routes(routes)
        self.families = families

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        context = logs.RequestContext(id=request_id(scope), method=scope["method"], path=scope["path"])
        header = (HEADER, context.id.encode("ascii"))
        status = 500
        complete = begun = False

        async def respond(message: Message) -> None:
            nonlocal status, complete, begun
            if message["type"] == "http.response.start":
                begun = True
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != HEADER]
                message = dict(message, headers=[*headers, header])
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                complete = True
            await send(message)

        token = logs.bind(context)
        self.metrics.in_flight.inc()
        started = time.perf_counter()
        try:
            try:
                await self.app(scope, receive, respond)
            except Exception as exc:
                if begun:
                    raise
                # Answered here rather than by the outermost error handler, so that
                # the answer carries the request id and is counted like the others.
                envelope = self.families.envelope_for(scope["path"])
                await error_response(exc, envelope)(scope, receive, respond)
        finally:
            seconds = time.perf_counter() - started
            self.metrics.in_flight.dec()
            if not complete and status < 400:
                status = CLIENT_GONE
            route = self.routes.of(scope["path"])
            family = self.families.name_of(route)
            self.metrics.request_done(family, route, context.model or "", status, seconds)
            _access(context, route, family, status, seconds, quiet=self.families.quiet(family))
            logs.unbind(token)


    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket session (realtime): its context (key, model, tokens) and one access
        line when it ends: 101 for a session held, or the status that refused it."""
        context = logs.RequestContext(id=request_id(scope), method="WS", path=scope["path"])
        status = 101
        accepted = False

        async def respond(message: Message) -> None:
            nonlocal status, accepted
            if message["type"] == "websocket.accept":
                accepted = True
            elif message["type"] == "websocket.http.response.start":
                status = message["status"]
            elif message["type"] == "websocket.close" and not accepted:
                status = 403
            await send(message)

        token = logs.bind(context)
        started = time.perf_counter()
        try:
            await self.app(scope, receive, respond)
        finally:
            route = self.routes.of(scope["path"])
            family = self.families.name_of(route)
            _access(context, route, family, status, time.perf_counter() - started, quiet=False)
            logs.unbind(token)


def _access(context: logs.RequestContext, route: str, family: str, status: int, seconds: float, *,
            quiet: bool) -> None:
    level = logging.DEBUG if quiet and status < 400 else logging.INFO
    if not access_log.isEnabledFor(level):
        return
    tokens = ""
    if context.prompt_tokens is not None or context.completion_tokens is not None:
        tokens = f" tokens={context.prompt_tokens or 0}+{context.completion_tokens or 0}"
    model = f" model={context.model}" if context.model else ""
    key = f" key={context.key}" if context.key else ""
    access_log.log(level, "%s %s %d %.3fs%s%s%s", context.method, context.path, status, seconds, model,
                   tokens, key, extra={
                       "method": context.method, "path": context.path, "route": route,
                       "family": family, "status": status, "duration_s": round(seconds, 6),
                       "model": context.model, "prompt_tokens": context.prompt_tokens,
                       "cached_tokens": context.cached_tokens,
                       "completion_tokens": context.completion_tokens, "key": context.key})
