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
from lokal.api import (anthropic, elevenlabs, generated_images, llamaserver, localai, lokal, ollama, openai,
                       realtime, responses, routes, ui)
from lokal.api.admin import log_admin_posture
from lokal.api.errors import install_handlers
from lokal.api.family import Families, Family
from lokal.api.keys import EphemeralKeys, KeysMiddleware
from lokal.api.middleware import BodyLimitMiddleware, DecompressMiddleware, NormalizeMiddleware
from lokal.api.observability import ObservabilityMiddleware
from lokal.api.ui.redirect import BrowserRedirectMiddleware
from lokal.install.manager import InstallManager
from lokal.keys import Keyring, KeysFile
from lokal.models.registry import ModelRegistry
from lokal.settings import Settings
from lokal.usage import UsageLedger

log = logging.getLogger(__name__)

#: The API families a server speaks, in the order their routes are matched (LocalAI's
#: /models/... paths before OpenAI's /models/{id}).
FAMILIES: tuple[Family, ...] = (routes.HEALTH, routes.METRICS, localai.FAMILY, openai.FAMILY, openai.RERANK,
                                ollama.FAMILY, responses.FAMILY, anthropic.FAMILY, elevenlabs.FAMILY,
                                generated_images.FAMILY, llamaserver.FAMILY, realtime.FAMILY, lokal.FAMILY,
                                ui.FAMILY)


def create_app(settings: Settings, registry: ModelRegistry, families: tuple[Family, ...] = FAMILIES, *,
               installer: InstallManager | None = None) -> FastAPI:
    """The server for one registry, speaking families, installing models with installer
    (default: one for settings). Nothing global: two apps can live side by side."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry.start_watchdog()
        preload = asyncio.create_task(_preload(app, registry, settings.preload))
        try:
            yield
        finally:
            preload.cancel()
            await registry.close()
            app.state.generated_images.close()

    app = FastAPI(title="lokal", version=__version__, lifespan=lifespan,
                  description="OpenAI- and LocalAI-compatible API for local models.",
                  docs_url="/docs", redoc_url=None)
    app.state.registry = registry
    app.state.settings = settings
    app.state.started = int(time.time())
    app.state.ready = asyncio.Event()
    app.state.stopping = asyncio.Event()  # set when shutdown's grace period is over
    install_handlers(app)
    app.state.metrics = registry.metrics  # the registry's loads, unloads and embeddings count there too
    app.state.installer = installer or InstallManager.from_settings(settings, on_change=registry.scan)
    log_admin_posture(settings)
    app.state.metrics.track(registry.snapshot)
    content = settings.generated_content_path
    app.state.generated_images = generated_images.GeneratedImages(
        content / "images" if content is not None else None,
        keep=settings.generated_images_keep, ttl=settings.generated_images_ttl)
    app.state.families = Families.of(families)
    for family in families:
        family.install(app)

    # Added innermost first: requests meet Normalize, Observability, CORS, Keys, BodyLimit,
    # Decompress in that order (answers of Keys and BodyLimit get request ids and are counted).
    app.add_middleware(DecompressMiddleware, limit_bytes=settings.upload_limit_bytes)
    app.add_middleware(BodyLimitMiddleware, limit_bytes=settings.upload_limit_bytes,
                       exempt=ollama.STREAMED_UPLOADS)  # uploads its routes stream to disk
    open_paths = app.state.families.open_paths + (("/metrics",) if settings.metrics_open else ())
    keys_file = KeysFile(settings.api_keys_file) if settings.api_keys_file is not None else None
    app.state.keys = Keyring(settings.api_keys, settings.admin_keys, keys_file)  # admin key works too
    app.state.usage = UsageLedger()
    app.state.ephemeral_keys = EphemeralKeys()  # realtime client secrets
    app.add_middleware(KeysMiddleware, keyring=app.state.keys, open_paths=open_paths,
                       open_prefixes=app.state.families.open_prefixes, ledger=app.state.usage,
                       metrics=app.state.metrics, ephemeral=app.state.ephemeral_keys)
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
