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
import collections
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from lokal.engines.base import Engine, EngineDied, Embeddings, LoadOptions, ModelLoadError
from lokal.engines.factory import create_engine
from lokal.errors import InsufficientMemory, ModelBusyError, ModelFailedError, ModelUnavailableError
from lokal.formats.modelfile import disk_size
from lokal.metrics import Metrics
from lokal.models.catalog import ModelEntry
from lokal.models.embedding import EmbeddingBatcher
from lokal.models.leasing import InstanceStatus, PoolStatus
from lokal.models.fairshare import FairQueue, Share
from lokal.models.memory import MIB, PROCESS_OVERHEAD, Estimate, MemoryBudget, estimate
from lokal.units import format_size
from lokal.models.planner import EngineDefaults, LoadPlan

log = logging.getLogger(__name__)

EngineFactory = Callable[[str, LoadOptions], Engine]
Key = tuple[str, str]  # model name, instance
CRASH_LIMIT = 3        # engine crashes of one model within CRASH_WINDOW seconds mark it failed
CRASH_WINDOW = 300.0


def default_engine_factory(engine_name: str, options: LoadOptions) -> Engine:
    """The engine, in this process (ENGINE_ISOLATION=inprocess)."""
    return create_engine(engine_name, options)


class Slots:
    """Admission to an engine's slots: a generation waits here, in lokal, until as many
    slots as it decodes choices are free, so that time in the queue is never taken for
    an engine that went quiet (the busy watchdog starts once a request is admitted).
    Waiting requests are admitted fairly across API keys (`fairshare.FairQueue`)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._queue = FairQueue(count)

    @property
    def free(self) -> int:
        return self._queue.free

    @property
    def waiting(self) -> int:
        return self._queue.waiting

    async def take(self, n: int, share: Share | None = None) -> Callable[[], None]:
        """Wait for n slots; the function returned gives them back (once)."""
        return await self._queue.take(n, share)


class Instance:
    """One loaded engine instance and who is using it."""

    def __init__(self, key: Key, engine: Engine, batcher: EmbeddingBatcher | None = None, *,
                 engine_name: str = "", size: int | None = None, memory: Estimate | None = None) -> None:
        self.key = key
        self.engine = engine
        self.batcher = batcher
        self.engine_name = engine_name
        self.size = size  # its weights' bytes, for the metrics
        self.memory = memory  # what it was estimated to take, for the memory budget
        self.retired = False
        self.crashes = 0  # engine process ends survived (requests waiting restarted it)
        self.in_use = 0
        self.last_used = time.monotonic()
        self.idle = asyncio.Event()
        self.idle.set()
        self.slots = Slots(engine.slots) if engine.slots else None

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
    """A loaded model held for one request (see `LocalPool.lease`; the `models.leasing.Lease`
    protocol)."""

    def __init__(self, pool: LocalPool, entry: ModelEntry, instance: Instance, share: Share | None = None) -> None:
        self.entry = entry
        self.share = share  # whose request it is, for a fair turn at the slots
        self.engine = instance.engine
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

    async def admit(self, n: int) -> Callable[[], None]:
        """Wait for n of the engine's slots (see `Slots`); call the function returned
        when the engine call has ended."""
        slots = self._instance.slots
        if slots is None:
            return lambda: None
        return await slots.take(n, self.share)

    def retire(self) -> None:
        """The engine stopped responding: take its instance out of service."""
        self._pool.retire(self._instance)

    async def embed(self, inputs: list[str] | list[list[int]], truncate: bool | None = None) -> Embeddings:
        """Embed with the leased model, batched with other requests when enabled;
        truncate (None: as the model's config says) overrides the config per request."""
        configured = self.entry.config.truncate
        batcher = self._instance.batcher
        if truncate is None or truncate == configured:
            truncate = configured
        else:
            batcher = None  # the batcher truncates as the config says
        metrics = self._pool.metrics
        metrics.embeddings(self.entry.name, len(inputs))
        if batcher is not None and inputs and isinstance(inputs[0], str):
            return await batcher.embed(inputs)  # type: ignore[arg-type]
        metrics.embedding_batch_ran(self.entry.name, len(inputs))
        return await self.run(self.engine.embed, inputs, truncate)

    async def run(self, function: Callable[..., Any], *args: Any) -> Any:
        """A blocking engine call on a thread, the instance held until it returns."""
        release = self.hold()
        try:
            return await asyncio.to_thread(function, *args)
        finally:
            release()


class LocalPool:
    """Engine instances of the catalog's models, loaded on demand on this machine (the
    `models.leasing.Pool` protocol)."""

    def __init__(self, defaults: EngineDefaults, *, max_active: int = 0,
                 idle_timeout: float | None = None, busy_timeout: float | None = None,
                 engine_factory: EngineFactory = default_engine_factory,
                 memory: MemoryBudget | None = None, crash_limit: int = CRASH_LIMIT,
                 crash_window: float = CRASH_WINDOW, metrics: Metrics | None = None) -> None:
        self.defaults = defaults
        self.max_active = max_active
        self.memory = memory  # None: no memory check (MEMORY_LIMIT=off)
        self.crash_limit = crash_limit
        self.crash_window = crash_window
        self.failed: dict[str, str] = {}  # model -> why it is refused until reloaded
        self.restarts = 0  # engine instances replaced after a crash or a hang
        self._crashes: dict[str, collections.deque[float]] = {}
        self.idle_timeout = idle_timeout
        self.busy_timeout = busy_timeout
        self._factory = engine_factory
        # Workers started ahead per engine kind (lokal.engines.spares), when the factory keeps them,
        # for the models of each kind (see want_spares).
        self.spares = getattr(engine_factory, "spares", None)
        self._spare_models: dict[str, set[str]] = {}
        self._loaded: dict[Key, Instance] = {}
        self._locks: dict[Key, asyncio.Lock] = {}
        self._capacity = asyncio.Lock()
        self._watchdog: asyncio.Task[None] | None = None
        self.metrics = metrics or Metrics()

    def status(self) -> PoolStatus:
        now = time.monotonic()
        instances = [InstanceStatus(model=name, purpose=purpose, engine=i.engine_name, in_use=i.in_use,
                                    slots=i.engine.slots, memory_bytes=i.size, idle_seconds=now - i.last_used,
                                    pid=getattr(i.engine, "pid", None))
                     for (name, purpose), i in self._loaded.items()]
        loading = frozenset(k[0] for k, lock in self._locks.items() if lock.locked() and k not in self._loaded)
        return PoolStatus(instances, loading, dict(self.failed), self.restarts, self.idle_timeout)

    def loaded(self) -> dict[Key, Instance]:
        return dict(self._loaded)

    def is_loaded(self, name: str, instance: str | None = None) -> bool:
        return any(k[0] == name and instance in (None, k[1]) for k in self._loaded)

    @contextlib.asynccontextmanager
    async def lease(self, entry: ModelEntry, plan: LoadPlan, share: Share | None = None) -> AsyncIterator[Lease]:
        """The planned instance of entry, loaded, held for the block; share says whose
        request it is (None: no named key) for a fair turn at the engine's slots."""
        key = (entry.name, plan.instance)
        if entry.name in self.failed:
            raise ModelFailedError(entry.name, self.failed[entry.name])
        instance = self._loaded.get(key)
        if instance is None:
            async with self._locks.setdefault(key, asyncio.Lock()):
                instance = self._loaded.get(key)
                if instance is None:
                    instance = await self._load(entry, plan)
        limit = self.defaults.parallel + self.defaults.queue_size
        if plan.instance in ("generate", "image") and instance.in_use >= limit:
            raise ModelBusyError(entry.name, limit)
        instance.take()
        lease = Lease(self, entry, instance, share)
        crashes = instance.crashes
        try:
            yield lease
        finally:
            lease._drop()
        if instance.crashes == crashes and not instance.retired and entry.name in self._crashes:
            # Served without a crash: a crash loop is crashes in a row.
            self._crashes.pop(entry.name, None)

    async def _load(self, entry: ModelEntry, plan: LoadPlan) -> Instance:
        need = None
        if self.memory is not None:
            need = await asyncio.to_thread(estimate, plan.engine, plan.options)
        async with self._capacity:
            # Room is made and the load done under one lock, so that two loads cannot both
            # count on the same free memory.
            await self._make_room(entry, need, plan.engine)
            return await self._load_now(entry, plan, need)

    async def _load_now(self, entry: ModelEntry, plan: LoadPlan, need: Estimate | None) -> Instance:
        started = time.monotonic()
        log.info("loading model %s from %s (%s%s)", entry.name, plan.options.model_path.name, plan.engine,
                 f", about {format_size(need.total)}" if need is not None else "")
        if plan.context_note:
            log.warning("model %s: %s", entry.name, plan.context_note)
        try:
            engine = await asyncio.to_thread(self._factory, plan.engine, plan.options)
        except ModelLoadError as exc:
            self.metrics.model_load_failed(entry.name, plan.instance)
            log.error("model %s failed to load: %s", entry.name, exc)
            if isinstance(exc, EngineDied):
                self._crashed(entry.name, str(exc))
                if entry.name in self.failed:
                    raise ModelFailedError(entry.name, self.failed[entry.name]) from exc
            raise ModelUnavailableError(entry.name, str(exc)) from exc
        batcher = None
        if plan.instance == "embed" and self.defaults.batch_embeddings:
            truncate = entry.config.truncate
            batcher = EmbeddingBatcher(engine, truncate, on_batch=functools.partial(
                self.metrics.embedding_batch_ran, entry.name))
        key = (entry.name, plan.instance)
        instance = Instance(key, engine, batcher, engine_name=plan.engine,
                            size=await asyncio.to_thread(disk_size, plan.options.model_path), memory=need)
        self._loaded[key] = instance
        loop = asyncio.get_running_loop()

        def on_exit(reason: str) -> None:  # on the worker's reader thread
            try:
                loop.call_soon_threadsafe(self._exited, instance, reason)
            except RuntimeError:  # the loop is gone: shutting down
                pass

        engine.supervise(entry.name, on_exit)
        self.metrics.model_loaded(entry.name, plan.instance, time.monotonic() - started)
        pid = getattr(engine, "pid", None)
        log.info("model %s ready in %.1fs%s", entry.name, time.monotonic() - started,
                 f" (worker {pid})" if pid else "")
        if self.spares is not None:  # the next first load of this kind gets one too
            await asyncio.to_thread(self.refill_spares, True)
        return instance

    # Spare workers -------------------------------------------------------------

    def want_spares(self, models: dict[str, set[str]]) -> None:
        """The servable models by the engine kind they load with: a spare worker is kept for each
        kind that has a model not loaded (what a first load would start), memory allowing."""
        self._spare_models = models
        self.refill_spares()

    def _spares_held(self, but: str = "") -> int:
        """What the spare workers (but the one of engine `but`) are estimated to take, in bytes."""
        if self.spares is None:
            return 0
        return sum(PROCESS_OVERHEAD.get(kind, 128 * MIB) for kind in self.spares.held() if kind != but)

    def refill_spares(self, background: bool = False) -> None:
        """Start the spares missing (and stop those no unloaded model needs), each only while free
        memory stays at least twice its size (the loaded models' estimates and the other spares
        counted); in the background (after a load or an unload, the server serving) they import
        at a lowered priority."""
        if self.spares is None:
            return
        loaded = {name for name, _ in self._loaded}
        self.spares.want({kind for kind, names in self._spare_models.items() if names - loaded})

        def fits(kind: str) -> bool:
            if self.memory is None:
                return True
            used = sum(i.memory.total for i in self._loaded.values() if i.memory is not None)
            free, _ = self.memory.free(used + self._spares_held())
            return free >= 2 * PROCESS_OVERHEAD.get(kind, 128 * MIB)

        self.spares.refill(fits, background)

    async def _make_room(self, entry: ModelEntry, need: Estimate | None, engine: str = "") -> None:
        """Unload least recently used instances until one more fits under the active-instance
        limit and in the memory budget; refuse (507) when memory cannot be found."""
        while self.max_active > 0 and len(self._loaded) >= self.max_active:
            key, victim = min(self._loaded.items(), key=lambda item: item[1].last_used)
            await victim.idle.wait()
            if self._loaded.get(key) is victim and victim.in_use == 0:
                log.info("unloading model %s (%s) to make room (MAX_ACTIVE_BACKENDS=%d)",
                         key[0], key[1], self.max_active)
                self.metrics.model_evicted(*key)
                await self._unload(key)
        if need is None or self.memory is None:
            return
        used = sum(i.memory.total for i in self._loaded.values() if i.memory is not None)
        # The spare of this load's engine becomes its worker: the estimate counts it already.
        free, why = self.memory.free(used + self._spares_held(but=engine))
        if need.total > free and self.spares is not None and set(self.spares.held()) - {engine}:
            # Spare workers are the cheapest memory to give back: stop them before any model.
            await asyncio.to_thread(self.spares.shed, engine)
            free, why = self.memory.free(used + self._spares_held(but=engine))
        freed = 0
        while need.total > free + freed:
            idle = [i for i in self._loaded.values() if i.in_use == 0]
            if not idle:
                break
            victim = min(idle, key=lambda i: i.last_used)
            size = victim.memory.total if victim.memory is not None else (victim.size or 0)
            log.info("unloading model %s (%s, about %s) to make room for %s (%s needed, %s free: %s)",
                     victim.key[0], victim.key[1], format_size(size), entry.name, format_size(need.total),
                     format_size(free + freed), why)
            self.metrics.model_evicted(*victim.key)
            await self._unload(victim.key)
            freed += size
        if need.total > free + freed:
            busy = len(self._loaded)
            held = f" ({busy} loaded model(s) are answering requests)" if busy else ""
            message = (f"Not enough memory to load the model '{entry.name}': it needs about "
                       f"{format_size(need.total)} ({need.describe()}) and {format_size(max(0, free + freed))} is free "
                       f"({why}){held}. Lower its context_size (CONTEXT_SIZE) or PARALLEL_REQUESTS, "
                       "use a smaller quantisation, or raise MEMORY_LIMIT.")
            log.error("%s", message)
            raise InsufficientMemory(message, needed=need.total, free=max(0, free + freed))

    def retire(self, instance: Instance) -> None:
        """Take an instance that stopped responding out of service: new requests get a
        fresh one; the old one is freed once its engine calls have returned. An engine
        in a worker process is killed at once (its other requests end as in a crash)."""
        if self._loaded.get(instance.key) is not instance:
            return
        log.error("model %s (%s) stopped responding: retired, will reload on the next request",
                  *instance.key)
        self._drop(instance)
        self.restarts += 1
        self.metrics.worker_restarted(*instance.key)
        self._crashed(instance.key[0], "its engine stopped responding (WATCHDOG_BUSY_TIMEOUT)")
        instance.engine.kill("no progress within WATCHDOG_BUSY_TIMEOUT")

    def _drop(self, instance: Instance) -> None:
        """Out of service; closed once its engine calls have returned."""
        instance.retired = True
        if self._loaded.get(instance.key) is instance:
            del self._loaded[instance.key]
            self.metrics.model_unloaded(*instance.key)

        async def close_when_idle() -> None:
            await instance.idle.wait()
            await asyncio.to_thread(instance.engine.close)
            if self.spares is not None:  # its next load is a first load again
                await asyncio.to_thread(self.refill_spares, True)

        asyncio.get_running_loop().create_task(close_when_idle())

    def _exited(self, instance: Instance, reason: str) -> None:
        """An instance's engine process ended on its own (a crash, a signal, the OOM killer)."""
        instance.crashes += 1
        if instance.retired:
            return  # killed by the busy watchdog: counted there
        self.restarts += 1
        self.metrics.worker_restarted(*instance.key)
        failed = self._crashed(instance.key[0], reason)
        if failed or instance.engine.waiting == 0:
            # The next request loads it again (through the memory check); requests that
            # were waiting for a slot restart it in place instead.
            self._drop(instance)

    def _crashed(self, name: str, reason: str) -> bool:
        """Count a crash of name's engine; True when that marks the model failed."""
        now = time.monotonic()
        times = self._crashes.setdefault(name, collections.deque())
        times.append(now)
        while times and now - times[0] > self.crash_window:
            times.popleft()
        if len(times) < self.crash_limit or name in self.failed:
            return name in self.failed
        self.failed[name] = (f"its engine crashed {len(times)} times within {self.crash_window:.0f}s "
                             f"(last: {reason}); it stays off until it is reloaded")
        log.error("model %s marked failed: %s", name, self.failed[name])
        for key, instance in list(self._loaded.items()):
            if key[0] == name:
                self._drop(instance)
        return True

    def clear_failures(self, name: str | None = None) -> None:
        """Let a failed model (or every one) load again: a reload."""
        for model in [name] if name is not None else list(self.failed):
            if self.failed.pop(model, None) is not None:
                log.info("model %s: failed state cleared; it loads on the next request", model)
            self._crashes.pop(model, None)

    async def _unload(self, key: Key) -> None:
        instance = self._loaded.pop(key, None)
        if instance is not None:
            self.metrics.model_unloaded(*key)
            await asyncio.to_thread(instance.engine.close)
            if self.spares is not None:  # its next load is a first load again
                await asyncio.to_thread(self.refill_spares, True)

    async def unload(self, name: str) -> bool:
        """Unload a model's instances once their requests are done (and clear a failed
        state); False if none was loaded."""
        self.clear_failures(name)
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
        if self.spares is not None:
            await asyncio.to_thread(self.spares.close)
        for key in list(self._loaded):
            await self._unload(key)
