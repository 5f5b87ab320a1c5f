"""The models a server offers: its catalog and its pool, put together.

`ModelRegistry.lease(name, task)` is the one way a request gets a model: the
request's API key may use the model (403 otherwise, whether or not it exists),
the catalog finds the entry (404 for an unknown name, never another model) and
makes it ready, the planner picks the engine instance for the task (400 when
the model cannot do it), the key's limits admit the request (429), and the pool
lends it, loading it first if needed, its turn at the slots fair across keys.
The key is the request's `lokal.callers.Caller`, read from its logging context.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from lokal import callers, logs
from lokal.metrics import Metrics, ModelState, RegistryState

from lokal.errors import ModelCapabilityError, ModelUnavailableError, NotFound, UnknownModelError
from lokal.models import download
from lokal.models.catalog import Catalog
from lokal.models.catalog import ModelEntry
from lokal.models.fairshare import Share
from lokal.models.memory import MemoryBudget
from lokal.models.planner import EngineDefaults, LoadPlan, main_task, plan_load
from lokal.models.leasing import Lease, Pool, PoolStatus
from lokal.models.pool import EngineFactory, LocalPool, default_engine_factory

log = logging.getLogger(__name__)

__all__ = ["EngineDefaults", "Lease", "ModelRegistry", "default_engine_factory", "local_registry"]


class ModelRegistry:
    """A catalog of named entries and a pool of their loaded instances, assembled once
    (`local_registry` for engines on this machine; `lokal.scale` for a Ray cluster)."""

    def __init__(self, catalog: Catalog, pool: Pool, defaults: EngineDefaults, metrics: Metrics) -> None:
        self.catalog = catalog
        self.pool = pool
        self.defaults = defaults
        self.metrics = metrics
        # One load plan per entry and task (its warnings logged once); a rescan makes new entries.
        self._plans: dict[tuple[str, str], tuple[ModelEntry, LoadPlan]] = {}
        self.pool.want_spares(self.engine_kinds())

    @property
    def models_path(self) -> Path:
        return self.catalog.models_path

    def status(self) -> PoolStatus:
        """What the pool holds now: the one view `/api/ps`, `/lokal/models`, the UI and
        the metrics read."""
        return self.pool.status()

    def snapshot(self) -> RegistryState:
        """Plain data about the loaded models, for the metrics' gauges."""
        state = RegistryState(known=len(self.catalog.entries))
        total: dict[tuple[str, str], ModelState] = {}  # on a cluster: summed over replicas
        for i in self.status().instances:
            seen = total.get((i.model, i.purpose))
            if seen is None:
                total[(i.model, i.purpose)] = ModelState(model=i.model, purpose=i.purpose, engine=i.engine,
                                                         in_use=i.in_use, slots=i.slots,
                                                         memory_bytes=i.memory_bytes)
                continue
            seen.in_use += i.in_use
            if i.slots is not None:
                seen.slots = (seen.slots or 0) + i.slots
            if i.memory_bytes is not None:
                seen.memory_bytes = (seen.memory_bytes or 0) + i.memory_bytes
        state.loaded.extend(total.values())
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
            if not isinstance(entry, ModelEntry) or not entry.tasks:
                continue
            try:
                engine = self.plan(entry, main_task(entry)).engine
            except Exception:  # noqa: BLE001 - a model that cannot plan says why when it is asked for
                continue
            kinds.setdefault(engine, set()).add(entry.name)
        return kinds

    def failure(self, name: str) -> str | None:
        """Why a model is refused after repeated engine crashes, or None."""
        return self.status().failed.get(name)

    def retry(self, name: str) -> None:
        """A model refused after repeated crashes may load again (a load by hand)."""
        self.pool.clear_failures(name)

    @property
    def entries(self) -> list[ModelEntry]:
        """Every entry; in a request with a key limited to some models, those only."""
        entries = self.catalog.entries
        caller = callers.current_caller()
        if caller is None or not caller.restricted:
            return entries
        return [e for e in entries if caller.allows(e.name)]

    def entry(self, name: str) -> ModelEntry:
        """The entry a request names (404 unknown; 403 when the request's key may not use it)."""
        self.permit(name)
        return self.catalog.entry(name)

    def permit(self, name: str) -> None:
        """Refuse (403) a model the request's API key may not use, unknown ones alike."""
        caller = callers.current_caller()
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
        caller = callers.current_caller()
        self.permit(name)
        entry = self.catalog.entry(name)
        logs.annotate(model=entry.name)  # for the access log and request metrics (known names only)
        entry = await self.catalog.ready(entry)
        plan = self.plan(entry, task)
        share = None
        if caller is not None:
            caller.admit()  # the key's limits (429), once per request
            if caller.name:
                share = Share(caller.name, caller.weight)
        async with self.pool.lease(entry, plan, share) as lease:
            yield lease

    def plan(self, entry: ModelEntry, task: str) -> LoadPlan:
        """The load plan for task on entry, computed once per entry (ModelCapabilityError,
        ModelUnavailableError when the entry cannot serve task)."""
        cached = self._plans.get((entry.name, task))
        if cached is not None and cached[0] is entry:
            return cached[1]
        plan = plan_load(entry, task, self.defaults)
        self._plans[(entry.name, task)] = (entry, plan)
        return plan

    def is_loaded(self, name: str, purpose: str | None = None) -> bool:
        return any(i.model == name and purpose in (None, i.purpose) for i in self.status().instances)

    async def unload(self, name: str) -> bool:
        self.catalog.entry(name)  # unknown: 404
        return await self.pool.unload(name)

    async def preload(self, names: list[str]) -> None:
        for name in names:
            try:
                entry = self.catalog.entry(name)
                entry = await self.catalog.ready(entry)
                async with self.lease(name, main_task(entry)):
                    pass
            except (UnknownModelError, ModelUnavailableError, ModelCapabilityError) as exc:
                log.error("preload of %r failed: %s", name, exc)

    def start_watchdog(self) -> None:
        self.pool.start_watchdog()

    async def close(self) -> None:
        await self.pool.close()


def local_registry(models_path: Path, defaults: EngineDefaults, *, config_file: Path | None = None,
                   max_active: int = 0, idle_timeout: float | None = None, busy_timeout: float | None = None,
                   engine_factory: EngineFactory = default_engine_factory, memory: MemoryBudget | None = None,
                   metrics: Metrics | None = None, aliases: dict[str, str] | None = None,
                   fetch_file: Callable[[download.Download], bool] | None = None) -> ModelRegistry:
    """A registry of one models folder whose engines run on this machine."""
    metrics = metrics or Metrics()
    catalog = Catalog(models_path, config_file, aliases=aliases, fetch_file=fetch_file, metrics=metrics)
    pool = LocalPool(defaults, max_active=max_active, idle_timeout=idle_timeout, busy_timeout=busy_timeout,
                     engine_factory=engine_factory, memory=memory, metrics=metrics)
    return ModelRegistry(catalog, pool, defaults, metrics)
