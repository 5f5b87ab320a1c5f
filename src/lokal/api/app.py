"""The ASGI application: routes under /v1 and bare, middleware, lifecycle."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from lokal import __version__
from lokal.api import anthropic, llamaserver, localai, lokal, ollama, openai, responses, routes, ui
from lokal.api.admin import log_admin_posture
from lokal.api.errors import install_handlers
from lokal.api.family import Families, Family
from lokal.api.middleware import (AuthMiddleware, BodyLimitMiddleware, DecompressMiddleware,
                                  NormalizeMiddleware)
from lokal.api.observability import ObservabilityMiddleware
from lokal.api.ui.redirect import BrowserRedirectMiddleware
from lokal.install.manager import InstallManager
from lokal.metrics import Metrics
from lokal.models.registry import ModelRegistry
from lokal.settings import Settings

log = logging.getLogger(__name__)

#: The API families a server speaks, in the order their routes are matched (LocalAI's
#: /models/... paths before OpenAI's /models/{id}).
FAMILIES: tuple[Family, ...] = (routes.HEALTH, routes.METRICS, localai.FAMILY, openai.FAMILY, openai.RERANK,
                                ollama.FAMILY, responses.FAMILY, anthropic.FAMILY, llamaserver.FAMILY, lokal.FAMILY,
                                ui.FAMILY)


def create_app(settings: Settings, registry: ModelRegistry,
               families: tuple[Family, ...] = FAMILIES) -> FastAPI:
    """The server for one registry, speaking families. Nothing global: two apps can live
    side by side."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry.start_watchdog()
        preload = asyncio.create_task(_preload(app, registry, settings.preload))
        try:
            yield
        finally:
            preload.cancel()
            await registry.close()

    app = FastAPI(title="lokal", version=__version__, lifespan=lifespan,
                  description="OpenAI- and LocalAI-compatible API for local models.",
                  docs_url="/docs", redoc_url=None)
    app.state.registry = registry
    registry.catalog.aliases = dict(settings.model_aliases)
    app.state.settings = settings
    app.state.started = int(time.time())
    app.state.ready = asyncio.Event()
    app.state.stopping = asyncio.Event()  # set when shutdown's grace period is over
    install_handlers(app)
    app.state.metrics = Metrics()
    app.state.installer = InstallManager.from_settings(settings, on_change=registry.scan)
    registry.catalog.fetch_file = app.state.installer.fetch_for_registry
    log_admin_posture(settings)
    app.state.metrics.track(registry.snapshot)
    registry.metrics = app.state.metrics  # its load, unload and embedding counters
    app.state.families = Families.of(families)
    for family in families:
        family.install(app)

    # Added innermost first: requests meet Normalize, Observability, CORS, Auth, BodyLimit,
    # Decompress in that order (answers of Auth and BodyLimit get request ids and are counted).
    app.add_middleware(DecompressMiddleware, limit_bytes=settings.upload_limit_bytes)
    app.add_middleware(BodyLimitMiddleware, limit_bytes=settings.upload_limit_bytes,
                       exempt=ollama.STREAMED_UPLOADS)  # uploads its routes stream to disk
    open_paths = app.state.families.open_paths + (("/metrics",) if settings.metrics_open else ())
    keys = settings.api_keys + settings.admin_keys if settings.api_keys else []  # admin key works too
    app.add_middleware(AuthMiddleware, keys=keys, open_paths=open_paths)
    if settings.cors:
        origins = settings.cors_origins
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["*"],
                           allow_headers=["*"], allow_credentials=origins != ["*"],
                           expose_headers=["X-Request-ID"])
    app.add_middleware(BrowserRedirectMiddleware)  # outside auth: browsers at / go to /ui/
    own = [path for path in (getattr(r, "path", "") for r in app.router.routes) if path]  # /docs, ...
    app.add_middleware(ObservabilityMiddleware, metrics=app.state.metrics,
                       routes=app.state.families.route_templates() + own, families=app.state.families)
    app.add_middleware(NormalizeMiddleware)
    return app


async def _preload(app: FastAPI, registry: ModelRegistry, names: list[str]) -> None:
    try:
        if names:
            log.info("preloading %s", ", ".join(names))
            await registry.preload(names)
    finally:
        app.state.ready.set()
        log.info("ready")
