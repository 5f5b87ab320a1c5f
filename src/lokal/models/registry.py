"""Which models exist, which are loaded, and when they load and unload.

A model loads on its first request (concurrent first requests load it once),
stays loaded, and is unloaded when idle past the watchdog timeout or when the
active-model limit needs room for another (least recently used first). A model
in use is never unloaded under a request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lokal.backends.base import Backend, LoadOptions, ModelLoadError
from lokal.models.config import ModelEntry, scan_models
from lokal.models.files import ModelFileError, inspect

log = logging.getLogger("lokal.models")

DEFAULT_CONTEXT = 4096


class UnknownModelError(LookupError):
    """No model by that name (a 404; never answered by another model)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class ModelUnavailableError(RuntimeError):
    """The model exists but cannot load; the message says why."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"model {name!r} cannot be loaded: {reason}")
        self.name = name
        self.reason = reason


@dataclass
class EngineDefaults:
    """Server-wide values a model config may override."""

    threads: int
    parallel: int
    context_size: int | None = None


BackendFactory = Callable[[str, LoadOptions], Backend]


def default_backend_factory(engine: str, options: LoadOptions) -> Backend:
    """The engine module for an engine name; imported only when needed."""
    if engine == "llama-cpp":
        from lokal.backends.llamacpp import LlamaCppBackend

        return LlamaCppBackend(options)
    raise ModelLoadError(f"the {engine!r} backend is not available in this version of lokal")


class _Loaded:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.in_use = 0
        self.last_used = time.monotonic()
        self.idle = asyncio.Event()
        self.idle.set()


class Lease:
    """A loaded model held for one request; release it when the response ends."""

    def __init__(self, registry: ModelRegistry, entry: ModelEntry, loaded: _Loaded) -> None:
        self.entry = entry
        self.backend = loaded.backend
        self._registry = registry
        self._loaded = loaded
        self._released = False

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._loaded.in_use -= 1
        self._loaded.last_used = time.monotonic()
        if self._loaded.in_use == 0:
            self._loaded.idle.set()


class ModelRegistry:
    """The models folder as a set of named, lazily loaded models."""

    def __init__(self, models_path: Path, defaults: EngineDefaults, *,
                 config_file: Path | None = None, max_active: int = 0,
                 idle_timeout: float | None = None,
                 backend_factory: BackendFactory = default_backend_factory) -> None:
        self.models_path = models_path
        self.config_file = config_file
        self.defaults = defaults
        self.max_active = max_active
        self.idle_timeout = idle_timeout
        self._factory = backend_factory
        self._entries: dict[str, ModelEntry] = {}
        self._loaded: dict[str, _Loaded] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._capacity = asyncio.Lock()
        self._watchdog: asyncio.Task[None] | None = None
        self.scan()

    # Discovery -------------------------------------------------------------

    def scan(self) -> list[ModelEntry]:
        entries = scan_models(self.models_path, self.config_file)
        self._entries = {e.name: e for e in entries}
        return entries

    @property
    def entries(self) -> list[ModelEntry]:
        return list(self._entries.values())

    def entry(self, name: str) -> ModelEntry:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownModelError(name) from None

    def is_loaded(self, name: str) -> bool:
        return name in self._loaded

    # Loading -----------------------------------------------------------------

    def load_options(self, entry: ModelEntry) -> tuple[str, LoadOptions]:
        """The engine and options for an entry, from its config, file and defaults."""
        config = entry.config
        assert config is not None and entry.model_path is not None
        try:
            model_file = inspect(entry.model_path)
        except ModelFileError as exc:
            raise ModelUnavailableError(entry.name, str(exc)) from exc
        engine = config.engine or ("llama-cpp" if model_file.kind == "gguf" else "sentence-transformers")
        trained = model_file.gguf.context_length if model_file.gguf else None
        context = config.context_size or self.defaults.context_size
        if context is None:
            context = min(trained or DEFAULT_CONTEXT, DEFAULT_CONTEXT)
        if trained and context > trained:
            log.warning("model %s: context_size %d exceeds the %d tokens it was trained on",
                        entry.name, context, trained)
        options = LoadOptions(
            model_path=entry.model_path,
            context_size=context,
            threads=config.threads or self.defaults.threads,
            parallel=self.defaults.parallel,
            f16=config.f16,
            mmap=config.mmap,
            gpu_layers=config.gpu_layers,
            embeddings=config.embeddings,
        )
        return engine, options

    async def acquire(self, name: str) -> Lease:
        """The named model, loaded, held for one request."""
        entry = self.entry(name)
        if entry.error is not None:
            raise ModelUnavailableError(name, entry.error)
        loaded = self._loaded.get(name)
        if loaded is None:
            lock = self._locks.setdefault(name, asyncio.Lock())
            async with lock:
                loaded = self._loaded.get(name)
                if loaded is None:
                    loaded = await self._load(entry)
        loaded.in_use += 1
        loaded.idle.clear()
        loaded.last_used = time.monotonic()
        return Lease(self, entry, loaded)

    async def _load(self, entry: ModelEntry) -> _Loaded:
        engine, options = self.load_options(entry)
        await self._make_room()
        started = time.monotonic()
        log.info("loading model %s from %s (%s)", entry.name, options.model_path.name, engine)
        try:
            backend = await asyncio.to_thread(self._factory, engine, options)
        except ModelLoadError as exc:
            log.error("model %s failed to load: %s", entry.name, exc)
            raise ModelUnavailableError(entry.name, str(exc)) from exc
        loaded = _Loaded(backend)
        self._loaded[entry.name] = loaded
        log.info("model %s ready in %.1fs", entry.name, time.monotonic() - started)
        return loaded

    async def _make_room(self) -> None:
        """Unload least recently used models until one more fits under the limit."""
        if self.max_active <= 0:
            return
        async with self._capacity:
            while len(self._loaded) >= self.max_active:
                name, victim = min(self._loaded.items(), key=lambda item: item[1].last_used)
                await victim.idle.wait()
                if self._loaded.get(name) is victim and victim.in_use == 0:
                    log.info("unloading model %s to make room (MAX_ACTIVE_BACKENDS=%d)",
                             name, self.max_active)
                    await self._unload(name)

    async def _unload(self, name: str) -> None:
        loaded = self._loaded.pop(name, None)
        if loaded is not None:
            await asyncio.to_thread(loaded.backend.close)

    async def unload(self, name: str) -> bool:
        """Unload a model once its requests are done; False if it was not loaded."""
        loaded = self._loaded.get(name)
        if loaded is None:
            return False
        await loaded.idle.wait()
        await self._unload(name)
        log.info("unloaded model %s", name)
        return True

    async def preload(self, names: list[str]) -> None:
        for name in names:
            try:
                lease = await self.acquire(name)
            except (UnknownModelError, ModelUnavailableError) as exc:
                log.error("preload of %r failed: %s", name, exc)
                continue
            lease.release()

    # Watchdog ----------------------------------------------------------------

    def start_watchdog(self) -> None:
        if self.idle_timeout and self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch_idle(self.idle_timeout))

    async def _watch_idle(self, timeout: float) -> None:
        interval = max(0.2, min(timeout / 4, 30.0))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for name, loaded in list(self._loaded.items()):
                if loaded.in_use == 0 and now - loaded.last_used >= timeout:
                    log.info("unloading model %s: idle for %.0fs (WATCHDOG_IDLE_TIMEOUT)",
                             name, now - loaded.last_used)
                    await self._unload(name)

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        for name in list(self._loaded):
            await self._unload(name)
