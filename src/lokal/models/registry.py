"""The models a server offers: its catalog and its pool, put together.

`ModelRegistry.lease(name, task)` is the one way a request gets a model: the
catalog finds the entry (404 for an unknown name, never another model) and
makes it ready, the planner picks the engine instance for the task (400 when
the model cannot do it), and the pool lends it, loading it first if needed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from lokal import logs
from lokal.metrics import Metrics, ModelState, RegistryState

from lokal.errors import ModelCapabilityError, ModelUnavailableError, UnknownModelError
from lokal.models.catalog import Catalog
from lokal.models.config import ModelEntry
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
        self.pool.want_spares(self.engine_kinds())

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
        entries = self.catalog.scan()
        self.pool.want_spares(self.engine_kinds())
        return entries

    def engine_kinds(self) -> dict[str, set[str]]:
        """The servable models by the engine they load with (what spare workers are kept for)."""
        kinds: dict[str, set[str]] = {}
        for entry in self.catalog.entries:
            if not entry.ok or entry.file is None or not entry.tasks:
                continue
            try:
                engine = plan_load(entry, main_task(entry), self.defaults).engine
            except Exception:  # noqa: BLE001 - a model that cannot plan says why when it is asked for
                continue
            kinds.setdefault(engine, set()).add(entry.name)
        return kinds

    def failure(self, name: str) -> str | None:
        """Why a model is refused after repeated engine crashes, or None."""
        return self.pool.failed.get(name)

    @property
    def entries(self) -> list[ModelEntry]:
        return self.catalog.entries

    def entry(self, name: str) -> ModelEntry:
        return self.catalog.entry(name)

    # Leases ----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lease(self, name: str, task: str) -> AsyncIterator[Lease]:
        """The named model, loaded for task, held for the block."""
        entry = self.catalog.entry(name)
        logs.annotate(model=entry.name)  # for the access log and request metrics (known names only)
        await self.catalog.ready(entry)
        plan = plan_load(entry, task, self.defaults)
        async with self.pool.lease(entry, plan) as lease:
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
