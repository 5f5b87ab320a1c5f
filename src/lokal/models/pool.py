"""The pool: loaded engine instances, leases, admission, LRU, idle and busy watchdogs.

An instance loads on its first lease (concurrent first leases load it once),
stays loaded, and is unloaded when idle past the watchdog timeout or when the
active-instance limit needs room for another (least recently used first). An
instance in use is never unloaded under a request. A lease is an async context
manager: the instance is given back when the block has ended *and* every engine
call the lease started has returned (a cancelled stream's engine thread may
still be finishing its token).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from lokal.backends.base import Backend, Embeddings, LoadOptions, ModelLoadError
from lokal.backends.engines import create_backend
from lokal.errors import ModelBusyError, ModelUnavailableError
from lokal.metrics import Metrics
from lokal.models.config import ModelEntry
from lokal.models.embedding import EmbeddingBatcher
from lokal.models.planner import EngineDefaults, LoadPlan

log = logging.getLogger(__name__)

BackendFactory = Callable[[str, LoadOptions], Backend]
Key = tuple[str, str]  # model name, instance


def default_backend_factory(engine: str, options: LoadOptions) -> Backend:
    """The engine, in this process (ENGINE_ISOLATION=inprocess)."""
    return create_backend(engine, options)


def _size(path: Path) -> int | None:
    """Bytes of a model file or folder."""
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size
    except OSError:
        return None


class Instance:
    """One loaded engine instance and who is using it."""

    def __init__(self, key: Key, backend: Backend, batcher: EmbeddingBatcher | None = None, *,
                 engine: str = "", size: int | None = None) -> None:
        self.key = key
        self.backend = backend
        self.batcher = batcher
        self.engine = engine
        self.size = size  # its weights' bytes, for the metrics
        self.in_use = 0
        self.last_used = time.monotonic()
        self.idle = asyncio.Event()
        self.idle.set()

    def take(self) -> None:
        self.in_use += 1
        self.idle.clear()
        self.last_used = time.monotonic()

    def give_back(self) -> None:
        self.in_use -= 1
        self.last_used = time.monotonic()
        if self.in_use == 0:
            self.idle.set()


class Lease:
    """A loaded model held for one request (see `Pool.lease`)."""

    def __init__(self, pool: Pool, entry: ModelEntry, instance: Instance) -> None:
        self.entry = entry
        self.backend = instance.backend
        self.busy_timeout = pool.busy_timeout
        self._pool = pool
        self._instance = instance
        self._holds = 1  # the lease's own block, plus one per running engine call

    def hold(self) -> Callable[[], None]:
        """Keep the instance for an engine call running on another thread; call the
        returned function (on the event loop) when the call has returned."""
        self._holds += 1
        done = False

        def release() -> None:
            nonlocal done
            if not done:
                done = True
                self._drop()

        return release

    def _drop(self) -> None:
        self._holds -= 1
        if self._holds == 0:
            self._instance.give_back()

    def retire(self) -> None:
        """The engine stopped responding: take its instance out of service."""
        self._pool.retire(self._instance)

    async def embed(self, inputs: list[str] | list[list[int]]) -> Embeddings:
        """Embed with the leased model, batched with other requests when enabled."""
        truncate = self.entry.config.truncate if self.entry.config is not None else True
        batcher = self._instance.batcher
        metrics = self._pool.metrics
        metrics.embeddings(self.entry.name, len(inputs))
        if batcher is not None and inputs and isinstance(inputs[0], str):
            return await batcher.embed(inputs)  # type: ignore[arg-type]
        metrics.embedding_batch_ran(self.entry.name, len(inputs))
        return await self.run(self.backend.embed, inputs, truncate)

    async def run(self, function: Callable[..., Any], *args: Any) -> Any:
        """A blocking engine call on a thread, the instance held until it returns."""
        release = self.hold()
        try:
            return await asyncio.to_thread(function, *args)
        finally:
            release()


class Pool:
    """Engine instances of the catalog's models, loaded on demand."""

    def __init__(self, defaults: EngineDefaults, *, max_active: int = 0,
                 idle_timeout: float | None = None, busy_timeout: float | None = None,
                 backend_factory: BackendFactory = default_backend_factory) -> None:
        self.defaults = defaults
        self.max_active = max_active
        self.idle_timeout = idle_timeout
        self.busy_timeout = busy_timeout
        self._factory = backend_factory
        self._loaded: dict[Key, Instance] = {}
        self._locks: dict[Key, asyncio.Lock] = {}
        self._capacity = asyncio.Lock()
        self._watchdog: asyncio.Task[None] | None = None
        self.metrics = Metrics()  # the registry's replaces it

    @property
    def loaded_count(self) -> int:
        return len(self._loaded)

    def loaded(self) -> dict[Key, Instance]:
        return dict(self._loaded)

    def is_loaded(self, name: str, instance: str | None = None) -> bool:
        return any(k[0] == name and instance in (None, k[1]) for k in self._loaded)

    @contextlib.asynccontextmanager
    async def lease(self, entry: ModelEntry, plan: LoadPlan) -> AsyncIterator[Lease]:
        """The planned instance of entry, loaded, held for the block."""
        key = (entry.name, plan.instance)
        instance = self._loaded.get(key)
        if instance is None:
            async with self._locks.setdefault(key, asyncio.Lock()):
                instance = self._loaded.get(key)
                if instance is None:
                    instance = await self._load(entry, plan)
        limit = self.defaults.parallel + self.defaults.queue_size
        if plan.instance == "generate" and instance.in_use >= limit:
            raise ModelBusyError(entry.name, limit)
        instance.take()
        lease = Lease(self, entry, instance)
        try:
            yield lease
        finally:
            lease._drop()

    async def _load(self, entry: ModelEntry, plan: LoadPlan) -> Instance:
        await self._make_room()
        started = time.monotonic()
        log.info("loading model %s from %s (%s)", entry.name, plan.options.model_path.name, plan.engine)
        try:
            backend = await asyncio.to_thread(self._factory, plan.engine, plan.options)
        except ModelLoadError as exc:
            self.metrics.model_load_failed(entry.name, plan.instance)
            log.error("model %s failed to load: %s", entry.name, exc)
            raise ModelUnavailableError(entry.name, str(exc)) from exc
        batcher = None
        if plan.instance == "embed" and self.defaults.batch_embeddings:
            truncate = entry.config.truncate if entry.config is not None else True
            batcher = EmbeddingBatcher(backend, truncate, on_batch=functools.partial(
                self.metrics.embedding_batch_ran, entry.name))
        key = (entry.name, plan.instance)
        instance = Instance(key, backend, batcher, engine=plan.engine,
                            size=await asyncio.to_thread(_size, plan.options.model_path))
        self._loaded[key] = instance
        self.metrics.model_loaded(entry.name, plan.instance, time.monotonic() - started)
        log.info("model %s ready in %.1fs", entry.name, time.monotonic() - started)
        return instance

    async def _make_room(self) -> None:
        """Unload least recently used instances until one more fits under the limit."""
        if self.max_active <= 0:
            return
        async with self._capacity:
            while len(self._loaded) >= self.max_active:
                key, victim = min(self._loaded.items(), key=lambda item: item[1].last_used)
                await victim.idle.wait()
                if self._loaded.get(key) is victim and victim.in_use == 0:
                    log.info("unloading model %s (%s) to make room (MAX_ACTIVE_BACKENDS=%d)",
                             key[0], key[1], self.max_active)
                    self.metrics.model_evicted(*key)
                    await self._unload(key)

    def retire(self, instance: Instance) -> None:
        """Take an instance that stopped responding out of service: new requests get a
        fresh one; the old one is freed once its engine calls have returned."""
        if self._loaded.get(instance.key) is not instance:
            return
        del self._loaded[instance.key]
        self.metrics.worker_restarted(*instance.key)
        self.metrics.model_unloaded(*instance.key)
        log.error("model %s (%s) stopped responding: retired, will reload on the next request",
                  *instance.key)

        async def close_when_idle() -> None:
            await instance.idle.wait()
            await asyncio.to_thread(instance.backend.close)

        asyncio.get_running_loop().create_task(close_when_idle())

    async def _unload(self, key: Key) -> None:
        instance = self._loaded.pop(key, None)
        if instance is not None:
            self.metrics.model_unloaded(*key)
            await asyncio.to_thread(instance.backend.close)

    async def unload(self, name: str) -> bool:
        """Unload a model's instances once their requests are done; False if none was loaded."""
        keys = [key for key in self._loaded if key[0] == name]
        for key in keys:
            instance = self._loaded.get(key)
            if instance is not None:
                await instance.idle.wait()
                await self._unload(key)
        if keys:
            log.info("unloaded model %s", name)
        return bool(keys)

    # Watchdog ----------------------------------------------------------------

    def start_watchdog(self) -> None:
        if self.idle_timeout and self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch_idle(self.idle_timeout))

    async def _watch_idle(self, timeout: float) -> None:
        interval = max(0.2, min(timeout / 4, 30.0))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for key, instance in list(self._loaded.items()):
                if instance.in_use == 0 and now - instance.last_used >= timeout:
                    log.info("unloading model %s (%s): idle for %.0fs (WATCHDOG_IDLE_TIMEOUT)",
                             key[0], key[1], now - instance.last_used)
                    await self._unload(key)

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        for key in list(self._loaded):
            await self._unload(key)
