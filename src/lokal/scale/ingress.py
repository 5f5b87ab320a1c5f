"""lokal's ingress on a Ray cluster: the pool whose leases run on the model replicas.

The ingress keeps HTTP, validation, auth, prompting and rendering, and a registry
assembled from its own catalog and a `RemotePool`: the registry answers
`lease(model, task)` as everywhere (unknown model 404, capability 400, the key's
rights and limits), and the pool lends a `RemoteLease` whose engine forwards the
engine calls: chat and completion chunks stream back in batches as the replica's
engine makes them, and stopping the sink (client gone, timeout) cancels the remote
stream, which stops the replica's engine within a token. A replica lost before it
answered is retried on another; one lost mid-answer fails that answer only (503).
Its status is what the replicas last posted to the board.

Nothing here is imported unless `lokal serve --ray` runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lokal import errors
from lokal.engines.base import ChunkSink, Embeddings, Engine, Scores, Transcription
from lokal.metrics import Metrics
from lokal.models.catalog import Catalog
from lokal.models.catalog import ModelEntry
from lokal.models.fairshare import Share
from lokal.models.leasing import InstanceStatus, PoolStatus
from lokal.models.planner import EngineDefaults, LoadPlan
from lokal.models.registry import ModelRegistry
from lokal.scale.wire import REPORT_INTERVAL, decode_error

log = logging.getLogger(__name__)

#: tries for a request whose replica died before it answered anything
ATTEMPTS = 3


#: per HTTP request: where the node that served it is written (read for X-Lokal-Node)
served_by: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "lokal_served_by", default=None)


def _is_lost_replica(exc: BaseException) -> bool:
    import ray.exceptions

    return isinstance(exc, ray.exceptions.RayError) and not isinstance(exc, ray.exceptions.RayTaskError)


def _is_backpressure(exc: BaseException) -> bool:
    from ray.serve.exceptions import BackPressureError

    return isinstance(exc, BackPressureError)


def _lost(node: dict[str, str] | None, exc: BaseException) -> errors.Unavailable:
    where = f" on node {node['node']}" if node else ""
    return errors.Unavailable(f"The model replica{where} was lost while answering "
                              f"({type(exc).__name__}); retry the request.")


class RemoteEngine(Engine):
    """An `Engine` whose calls run on a model replica (blocking: engine calls run on a thread)."""

    def __init__(self, handle: Any, model: str, task: str, *, slots: int | None,
                 dimensions: int | None, on_node: Callable[[dict[str, str]], None]) -> None:
        self._handle = handle.options(multiplexed_model_id=model)
        self._stream = handle.options(multiplexed_model_id=model, stream=True)
        self._task = task
        self.slots = slots
        self._dimensions = dimensions
        self._on_node = on_node
        self.node: dict[str, str] | None = None

    @property
    def dimensions(self) -> int | None:
        return self._dimensions

    def chat(self, body: dict[str, Any], sink: ChunkSink, *, streamed: bool = True) -> None:
        self._generate("chat", body, sink, streamed)

    def complete(self, body: dict[str, Any], sink: ChunkSink, *, streamed: bool = True) -> None:
        self._generate("complete", body, sink, streamed)

    def _generate(self, mode: str, body: dict[str, Any], sink: ChunkSink, streamed: bool) -> None:
        for attempt in range(ATTEMPTS):
            answered = False
            stream = self._stream.generate.remote(self._task, mode, body, streamed)
            try:
                for kind, payload in stream:
                    if kind == "node":
                        self._seen(payload)
                    elif kind == "error":
                        raise decode_error(payload)
                    else:
                        answered = True
                        for chunk in payload:
                            if sink(chunk):
                                stream.cancel()  # reaches the replica: its engine stops
                                return
                return
            except errors.LokalError:
                raise
            except Exception as exc:
                if _is_backpressure(exc):
                    raise errors.Busy(f"Every replica of this model is busy: {exc}") from exc
                if not _is_lost_replica(exc):
                    raise
                if answered or attempt == ATTEMPTS - 1:
                    raise _lost(self.node, exc) from exc
                log.warning("model replica lost before answering (%s); trying another", exc)
                time.sleep(0.5 * (attempt + 1))

    def _seen(self, node: dict[str, str]) -> None:
        self.node = node
        self._on_node(node)

    def unary(self, op: str, *args: Any) -> Any:
        """A blocking call on a thread."""
        for attempt in range(ATTEMPTS):
            try:
                outcome = self._handle.call.remote(self._task, op, args).result()
            except Exception as exc:
                if _is_backpressure(exc):
                    raise errors.Busy(f"Every replica of this model is busy: {exc}") from exc
                if not _is_lost_replica(exc) or attempt == ATTEMPTS - 1:
                    raise _lost(self.node, exc) if _is_lost_replica(exc) else exc from exc
                time.sleep(0.5 * (attempt + 1))
                continue
            return self._outcome(outcome)
        raise AssertionError("unreachable")

    async def unary_async(self, op: str, *args: Any) -> Any:
        for attempt in range(ATTEMPTS):
            try:
                outcome = await self._handle.call.remote(self._task, op, args)
            except Exception as exc:
                if _is_backpressure(exc):
                    raise errors.Busy(f"Every replica of this model is busy: {exc}") from exc
                if not _is_lost_replica(exc) or attempt == ATTEMPTS - 1:
                    raise _lost(self.node, exc) if _is_lost_replica(exc) else exc from exc
                await asyncio.sleep(0.5 * (attempt + 1))
                continue
            return self._outcome(outcome)
        raise AssertionError("unreachable")

    def _outcome(self, outcome: tuple[str, dict[str, str], Any]) -> Any:
        status, node, value = outcome
        self._seen(node)
        if status == "error":
            raise decode_error(value)
        return value

    def rerank(self, query: str, documents: list[str]) -> Scores:
        return self.unary("rerank", query, documents)

    def transcribe(self, audio: bytes, *, language: str | None = None, prompt: str | None = None,
                   temperature: float = 0.0, vad_filter: bool = False) -> Transcription:
        return self.unary("transcribe", audio, {"language": language, "prompt": prompt,
                                                "temperature": temperature, "vad_filter": vad_filter})

    def close(self) -> None:
        pass


class RemoteLease:
    """What `RayRegistry.lease` lends: the same surface as a local `Lease`."""

    def __init__(self, entry: ModelEntry, engine: RemoteEngine, busy_timeout: float | None) -> None:
        self.entry = entry
        self.engine = engine
        # The replica's own busy watchdog retires a stuck engine; the ingress waits a
        # little longer before it gives up on a silent replica.
        self.busy_timeout = busy_timeout + 5 if busy_timeout else None

    def hold(self) -> Callable[[], None]:
        return lambda: None

    async def admit(self, n: int) -> Callable[[], None]:
        return lambda: None  # the replica's engine admits its own requests to its slots

    def retire(self) -> None:
        pass  # the replica's pool retires its own stuck instances

    async def embed(self, inputs: list[str] | list[list[int]], truncate: bool | None = None) -> Embeddings:
        return await self.engine.unary_async("embed", inputs, truncate)

    async def run(self, function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(function, *args)


@dataclass
class ClusterView:
    """The replicas as the board last showed them (refreshed in the background)."""

    board: Any
    replicas: list[dict[str, Any]] = field(default_factory=list)
    refreshed: float = 0.0
    _task: asyncio.Task[None] | None = None

    async def refresh(self) -> list[dict[str, Any]]:
        with contextlib.suppress(Exception):
            self.replicas = await self.board.snapshot.remote()
            self.refreshed = time.time()
        return self.replicas

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._forever())

    async def _forever(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(REPORT_INTERVAL)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


class RemotePool:
    """The `models.leasing.Pool` of an ingress: leases on the model replicas (a handle to
    their deployment); its status is the board's."""

    def __init__(self, models: Any, board: Any, *, busy_timeout: float | None = None,
                 metrics: Metrics | None = None) -> None:
        self.models = models  # DeploymentHandle of the model replicas
        self.view = ClusterView(board)
        self.metrics = metrics or Metrics()
        self._described: dict[tuple[str, str], dict[str, Any]] = {}
        self._busy_timeout = busy_timeout

    @contextlib.asynccontextmanager
    async def lease(self, entry: ModelEntry, plan: LoadPlan, share: Share | None = None) -> AsyncIterator[RemoteLease]:
        # Replicas queue their slots first come, first served: keys' limits hold at the ingress.
        box = served_by.get()

        def on_node(node: dict[str, str]) -> None:
            if box is not None:
                box["node"] = node

        key = (entry.name, plan.instance)
        described = self._described.get(key)
        task = plan.task
        if described is None:
            probe = RemoteEngine(self.models, entry.name, task, slots=None, dimensions=None, on_node=on_node)
            described = await probe.unary_async("describe")
            self._described[key] = described
        engine = RemoteEngine(self.models, entry.name, task, slots=described["slots"],
                              dimensions=described["dimensions"], on_node=on_node)
        yield RemoteLease(entry, engine, described.get("busy_timeout"))

    def status(self) -> PoolStatus:
        instances = [InstanceStatus(model=m["model"], purpose=m["purpose"], engine=m["engine"], in_use=m["in_use"],
                                    slots=m["slots"], memory_bytes=m["memory_bytes"],
                                    idle_seconds=m.get("idle_seconds", 0.0), pid=m.get("pid"), node=r["node"])
                     for r in self.view.replicas for m in r["models"]]
        return PoolStatus(instances)

    async def unload(self, name: str) -> bool:
        raise errors.Conflict("Unloading a model is not available on a Ray cluster: replicas unload "
                              "models by LRU (MAX_ACTIVE_BACKENDS) and WATCHDOG_IDLE_TIMEOUT.")

    def clear_failures(self, name: str | None = None) -> None:
        pass  # each replica's pool keeps its own

    def want_spares(self, models: dict[str, set[str]]) -> None:
        pass  # the replicas keep their own spare workers

    def start_watchdog(self) -> None:
        self.view.start()  # the replicas run their own watchdogs

    async def close(self) -> None:
        self.view.stop()


def remote_registry(models: Any, board: Any, options: dict[str, Any],
                    aliases: dict[str, str] | None = None) -> ModelRegistry:
    """The ingress's registry: its own catalog of the models folder (the same on every
    node) and a pool on the replicas; options as `local_registry` takes them."""
    metrics = Metrics()
    catalog = Catalog(Path(options["models_path"]), options.get("config_file"), aliases=aliases, metrics=metrics)
    pool = RemotePool(models, board, busy_timeout=options.get("busy_timeout"), metrics=metrics)
    defaults: EngineDefaults = options["defaults"]
    return ModelRegistry(catalog, pool, defaults, metrics)
