"""GET /metrics: Prometheus text counters of requests and models."""

from __future__ import annotations

import time
from collections import defaultdict

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

router = APIRouter()


class Metrics:
    """Request counters for one app (no process-wide state)."""

    def __init__(self) -> None:
        self.requests: defaultdict[tuple[str, int], int] = defaultdict(int)
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.in_flight = 0

    def render(self, loaded: int, known: int) -> str:
        lines = ["# TYPE lokal_requests_total counter"]
        for (path, status), count in sorted(self.requests.items()):
            lines.append(f'lokal_requests_total{{path="{path}",status="{status}"}} {count}')
        lines.append("# TYPE lokal_request_seconds_total counter")
        for path, seconds in sorted(self.seconds.items()):
            lines.append(f'lokal_request_seconds_total{{path="{path}"}} {seconds:.6f}')
        lines += ["# TYPE lokal_requests_in_flight gauge", f"lokal_requests_in_flight {self.in_flight}",
                  "# TYPE lokal_models_loaded gauge", f"lokal_models_loaded {loaded}",
                  "# TYPE lokal_models_known gauge", f"lokal_models_known {known}"]
        return "\n".join(lines) + "\n"


class MetricsMiddleware:
    """Counts every HTTP request by route path and status (paths of matched routes
    only, so hostile URLs cannot grow the label set)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.monotonic()

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight += 1
        try:
            await self.app(scope, receive, record)
        finally:
            self.metrics.in_flight -= 1
            path = scope["path"] if scope.get("route") is not None else "unmatched"
            self.metrics.requests[(path, status)] += 1
            self.metrics.seconds[path] += time.monotonic() - started


@router.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> PlainTextResponse:
    registry = request.app.state.registry
    text = request.app.state.metrics.render(registry.loaded_count, len(registry.entries))
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")
