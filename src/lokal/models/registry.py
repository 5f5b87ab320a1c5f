"""The models a server offers: its catalog and its pool, put together.

`ModelRegistry.lease(name, task)` is the one way a request gets a model: the
request's API key may use the model (403 otherwise, whether or not it exists),
the catalog finds the entry (404 for an unknown name, never another model) and
makes it ready, the planner picks the engine instance for the task (400 when
the model cannot do it), the key's limits admit the request (429), and the pool
lends it, loading it first if needed, its turn at the slots fair across keys.
The key is the request's `lokal.keys.Caller`, read from its logging context.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from lokal import keys, logs
from lokal.metrics import Metrics, ModelState, RegistryState

from lokal.errors import ModelCapabilityError, ModelUnavailableError, NotFound, UnknownModelError
from lokal.models.catalog import Catalog
from lokal.models.config import ModelEntry
from lokal.models.fairshare import Share
from lokal.models.memory import MemoryBudget
from lokal.models.planner import EngineDefaults, main_task, plan_load
from lokal.models.pool import EngineFactory, Lease, Pool, default_engine_factory

log = logging.getLogger(__name__)

__all__ = ["EngineDefaults", "Lease", "ModelRegistry", "default_engine_factory"]


class ModelRegistry:
    """One models folder: named entries (the catalog) and their loaded instances (the pool)."""

    def __init__(self, models_path: Path, defaults: EngineDefaults, *,
                 config_file: Path | None = None, max_active: int = 0,
                 idle_timeout: float | None = None, busy_timeout: float | None = None,
                 engine_factory: EngineFactory = default_engine_factory,
                 memory: MemoryBudget | None = None) -> None:
        self.models_path = models_path
        self.defaults = defaults
        self.catalog = Catalog(models_path, config_file)
        self.pool = Pool(defaults, max_active=max_active, idle_timeout=idle_timeout,
                         busy_timeout=busy_timeout, engine_factory=engine_factory, memory=memory)
        self.metrics = Metrics()  # the app's replaces it (lokal.api.app)

    @property
    def metrics(self) -> Metrics:
        return self.pool.metrics

    @metrics.setter
    def metrics(self, metrics: Metrics) -> None:
        self.pool.metrics = self.catalog.metrics = metrics

    def snapshot(self) -> RegistryState:
        """Plain data about the loaded models, for the metrics' gauges."""
        state = RegistryState(known=len(self.catalog.entries))
        for (name, instance_kind), instance in self.pool.loaded().items():
            state.loaded.append(ModelState(
                model=name, purpose=instance_kind, engine=instance.engine_name,
                in_use=instance.in_use, slots=instance.engine.slots,
                memory_bytes=instance.size))
        return state

    # The catalog -----------------------------------------------------------

    def scan(self) -> list[ModelEntry]:
        """Read the models folder again (after an install or a removal); models marked
        failed after repeated engine crashes may load again."""
        self.pool.clear_failures()
        return self.catalog.scan()

    def failure(self, name: str) -> str | None:
        """Why a model is refused after repeated engine crashes, or None."""
        return self.pool.failed.get(name)

    @property
    def entries(self) -> list[ModelEntry]:
        """Every entry; in a request with a key limited to some models, those only."""
        entries = self.catalog.entries
        caller = keys.current_caller()
        if caller is None or not caller.restricted:
            return entries
        return [e for e in entries if caller.allows(e.name)]

    def entry(self, name: str) -> ModelEntry:
        """The entry a request names (404 unknown; 403 when the request's key may not use it)."""
        self.permit(name)
        return self.catalog.entry(name)

    def permit(self, name: str) -> None:
        """Refuse (403) a model the request's API key may not use, unknown ones alike."""
        caller = keys.current_caller()
        if caller is not None:
            caller.permit(name, self._served_as)

    def _served_as(self, name: str) -> str | None:
        try:
            return self.catalog.entry(name).name
        except NotFound:
            return None

    # Leases ----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lease(self, name: str, task: str) -> AsyncIterator[Lease]:
        """The named model, loaded for task, held for the block."""
        caller = keys.current_caller()
        self.permit(name)
        entry = self.catalog.entry(name)
        logs.annotate(model=entry.name)  # for the access log and request metrics (known names only)
        await self.catalog.ready(entry)
        plan = plan_load(entry, task, self.defaults)
        share = None
        if caller is not None:
            caller.admit()  # the key's limits (429), once per request
            if caller.name:
                share = Share(caller.name, caller.weight)
        async with self.pool.lease(entry, plan, share) as lease:
            yield lease

    def is_loaded(self, name: str) -> bool:
        return self.pool.is_loaded(name)

    @property
    def loaded_count(self) -> int:
        return self.pool.loaded_count

    async def unload(self, name: str) -> bool:
        self.catalog.entry(name)  # unknown: 404
        return await self.pool.unload(name)

    async def preload(self, names: list[str]) -> None:
        for name in names:
            try:
                entry = self.catalog.entry(name)
                await self.catalog.ready(entry)
                async with self.lease(name, main_task(entry)):
                    pass
            except (UnknownModelError, ModelUnavailableError, ModelCapabilityError) as exc:
                log.error("preload of %r failed: %s", name, exc)

    def start_watchdog(self) -> None:
        self.pool.start_watchdog()

    async def close(self) -> None:
        await self.pool.close()
