"""Health checks and the metrics scrape: families of their own, logged quietly."""

from __future__ import annotations

from lokal.api.family import Family, Mount
from lokal.api.routes import health, metrics

HEALTH = Family("health", mounts=(Mount(health.router),), prefixes=("/healthz", "/readyz"), quiet=True,
                open_paths=("/healthz", "/readyz"))
METRICS = Family("metrics", mounts=(Mount(metrics.router),), prefixes=("/metrics",), quiet=True)
