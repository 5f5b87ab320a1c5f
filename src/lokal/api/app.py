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
from lokal.api.admin import log_admin_posture
from lokal.api.errors import install_handlers
from lokal.api.localai import models as localai_models
from lokal.api.localai import tokenize as localai_tokenize
from lokal.api import llamaserver
from lokal.api.lokal import routes as lokal_routes
from lokal.api.middleware import (AuthMiddleware, BodyLimitMiddleware, DecompressMiddleware,
                                  NormalizeMiddleware)
from lokal.api.observability import ObservabilityMiddleware
from lokal.api import ollama
from lokal.api.ollama import create as ollama_create
from lokal.api.ollama import manage as ollama_manage
from lokal.api.ollama import rerank as ollama_rerank
from lokal.api.ollama import routes as ollama_routes
from lokal.api import anthropic, responses
from lokal.api.openai import audio, embeddings, rerank
from lokal.api.openai import routes as openai
from lokal.api.routes import health, metrics
from lokal.api.ui import routes as ui
from lokal.api.ui.redirect import BrowserRedirectMiddleware
from lokal.install.manager import InstallManager
from lokal.metrics import Metrics
from lokal.models.registry import ModelRegistry
from lokal.settings import Settings

log = logging.getLogger(__name__)

OPEN_PATHS = ("/healthz", "/readyz")


def create_app(settings: Settings, registry: ModelRegistry) -> FastAPI:
    """The server for one registry. Nothing global: two apps can live side by side."""

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
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(localai_models.router)  # before /models/{id} of the bare OpenAI routes
    app.include_router(openai.router, prefix="/v1", tags=["OpenAI"])
    app.include_router(openai.router, include_in_schema=False)
    app.include_router(embeddings.router, prefix="/v1", tags=["OpenAI"])
    app.include_router(embeddings.router, include_in_schema=False)
    app.include_router(audio.router, prefix="/v1", tags=["OpenAI"])
    app.include_router(audio.router, include_in_schema=False)
    app.include_router(rerank.router, prefix="/v1", tags=["Rerank"])
    app.include_router(rerank.router, include_in_schema=False)
    app.include_router(rerank.router, prefix="/v2", include_in_schema=False)  # Cohere's v2 client
    ollama.register()
    app.include_router(ollama_routes.router, prefix="/api", tags=["Ollama"])
    app.include_router(ollama_manage.router, prefix="/api", tags=["Ollama"])
    app.include_router(ollama_rerank.router, prefix="/api", tags=["Ollama"])
    app.include_router(ollama_create.router, prefix="/api", tags=["Ollama"])
    app.include_router(ollama_routes.root, include_in_schema=False)
    app.include_router(responses.router, prefix="/v1", tags=["OpenAI Responses"])
    app.include_router(responses.router, include_in_schema=False)
    app.include_router(anthropic.router, prefix="/v1", tags=["Anthropic Messages"])
    app.include_router(anthropic.router, include_in_schema=False)
    app.include_router(localai_tokenize.router)
    app.include_router(llamaserver.router)
    app.include_router(llamaserver.admin_router)
    app.include_router(lokal_routes.router)
    app.include_router(ui.router)

    # Added innermost first: requests meet Normalize, Observability, CORS, Auth, BodyLimit,
    # Decompress in that order (answers of Auth and BodyLimit get request ids and are counted).
    app.add_middleware(DecompressMiddleware, limit_bytes=settings.upload_limit_bytes)
    app.add_middleware(BodyLimitMiddleware, limit_bytes=settings.upload_limit_bytes,
                       exempt=ollama_create.STREAMED_UPLOADS)
    open_paths = OPEN_PATHS + ui.OPEN_PATHS + (("/metrics",) if settings.metrics_open else ())
    keys = settings.api_keys + settings.admin_keys if settings.api_keys else []  # admin key works too
    app.add_middleware(AuthMiddleware, keys=keys, open_paths=open_paths)
    if settings.cors:
        origins = settings.cors_origins
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["*"],
                           allow_headers=["*"], allow_credentials=origins != ["*"],
                           expose_headers=["X-Request-ID"])
    app.add_middleware(BrowserRedirectMiddleware)  # outside auth: browsers at / go to /ui/
    routes = [getattr(r, "path", "") for router in (app.router, health.router, metrics.router,
              openai.router, embeddings.router, audio.router, rerank.router) for r in router.routes]
    app.add_middleware(ObservabilityMiddleware, metrics=app.state.metrics,
                       routes=[path for path in routes if path])
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
