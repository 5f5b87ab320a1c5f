"""Model replicas on a Ray cluster, and the registry the ingress leases them through.

A model replica (`ModelReplica`) is a Ray Serve replica holding a real
`ModelRegistry` on its node: the catalog of that node's models folder and a pool
with the usual rules (load once, LRU under MAX_ACTIVE_BACKENDS, idle unload,
slots and queue, busy watchdog). Requests carry the model name as Ray Serve's
multiplexed model id, so Serve routes a request for model M to a replica that
has M loaded when one has room.

The ingress keeps HTTP, validation, auth, prompting and rendering: its
`RayRegistry` answers `lease(model, task)` like the local one (unknown model 404,
capability 400, from the same catalog) and lends a `RemoteLease` whose engine
forwards the engine calls: chat and completion chunks stream back in batches as
the replica's engine makes them, and stopping the sink (client gone, timeout)
cancels the remote stream, which stops the replica's engine within a token.
Errors cross as plain data and are raised again as the same `LokalError` kind
with the same status and type. A replica lost before it answered is retried on
another; one lost mid-answer fails that answer only (503).

Nothing here is imported unless `lokal serve --ray` runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lokal import errors, keys, logs
from lokal.engines.base import Engine, ChunkSink, Embeddings, Scores, Transcription
from lokal.metrics import ModelState, RegistryState
from lokal.models.config import ModelEntry
from lokal.models.generation import engine_chunks, guarded
from lokal.models.planner import plan_load
from lokal.models.registry import ModelRegistry

log = logging.getLogger(__name__)

#: how often a replica posts its state to the board, and how old a post may be
REPORT_INTERVAL = 1.0
STALE_AFTER = 6.0
#: tries for a request whose replica died before it answered anything
ATTEMPTS = 3
#: A replica sends a generation's chunks at most this often (the first batch at once):
#: every item of a Ray stream is an object that crosses processes, a cost in CPU on both
#: sides paid per item, so tokens that arrive within the interval travel together.
STREAM_INTERVAL = 0.02
#: ... and for a client that reads the answer whole: it only needs the end (the ingress's
#: busy watchdog hears from the replica at least this often; the end is never held back).
WHOLE_INTERVAL = 1.0


class ReplicaSetupError(RuntimeError):
    """A replica that cannot serve what the cluster offers (a model file missing on its node)."""


# Errors across the wire -----------------------------------------------------

_KINDS: dict[str, type[errors.LokalError]] = {
    cls.__name__: cls for cls in (
        errors.BadRequest, errors.Unauthorized, errors.Forbidden, errors.NotFound,
        errors.Conflict, errors.Busy, errors.Timeout, errors.ServerError, errors.Unavailable,
        errors.InsufficientStorage)
}


def encode_error(exc: BaseException) -> dict[str, Any]:
    """A replica's exception as plain data: its kind (the nearest of lokal's base kinds),
    message, status, type, param, headers and extra."""
    if isinstance(exc, errors.EngineError):
        exc = errors.normalize_engine_error(exc)
    if not isinstance(exc, errors.LokalError):
        log.error("replica error", exc_info=exc)
        exc = errors.ServerError(f"the model replica failed: {type(exc).__name__}: {exc}")
    kind = next((c.__name__ for c in type(exc).__mro__ if c.__name__ in _KINDS), "LokalError")
    return {"kind": kind, "message": exc.message, "status": exc.status, "type": exc.type,
            "param": exc.param, "headers": dict(exc.headers), "extra": dict(exc.extra),
            "retry_after": getattr(exc, "retry_after", None)}


def decode_error(data: dict[str, Any]) -> errors.LokalError:
    """The same kind of LokalError again, on the ingress."""
    cls = _KINDS.get(data.get("kind", ""), errors.LokalError)
    kwargs: dict[str, Any] = {"param": data.get("param"), "status": data.get("status"),
                              "type": data.get("type"), "headers": data.get("headers") or {},
                              "extra": data.get("extra") or {}}
    if cls is errors.Busy and data.get("retry_after") is not None:
        kwargs["retry_after"] = int(data["retry_after"])
    return cls(str(data.get("message") or "error"), **kwargs)


# Model files: the same on every node -----------------------------------------

def expected_files(entries: list[ModelEntry], models_path: Path) -> dict[str, dict[str, Any]]:
    """What each servable model's file is on the node that deploys: path (relative to
    the models folder when inside it) and size, for replicas to check theirs against.
    Files still to be downloaded on first use are left out."""
    out: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if not entry.ok or entry.model_path is None:
            continue
        path = entry.model_path
        if any(item.path == path for item in entry.pending_downloads):
            continue
        try:
            shown = str(path.resolve().relative_to(models_path.resolve()))
        except ValueError:
            shown = str(path)
        size = path.stat().st_size if path.is_file() else None
        out[entry.name] = {"path": shown, "size": size, "dir": path.is_dir()}
    return out


def check_model_files(models_path: Path, expected: dict[str, dict[str, Any]], node: str) -> None:
    """Refuse to start a replica on a node whose models folder lacks a model file the
    cluster offers, or holds a different one under its name."""
    problems: list[str] = []
    for name, want in sorted(expected.items()):
        path = Path(want["path"])
        if not path.is_absolute():
            path = models_path / path
        if want.get("dir"):
            if not path.is_dir():
                problems.append(f"model {name!r}: folder {path} is missing")
            continue
        if not path.is_file():
            problems.append(f"model {name!r}: file {path} is missing")
        elif want.get("size") is not None and path.stat().st_size != want["size"]:
            problems.append(f"model {name!r}: file {path} is {path.stat().st_size} bytes, "
                            f"not {want['size']} as on the node that deployed")
    if problems:
        raise ReplicaSetupError(
            f"node {node} cannot serve this cluster's models: " + "; ".join(problems)
            + ". The models folder (MODELS_PATH) must hold the same files on every node "
            "(a shared path, or `lokal models install` run on each node).")


# The board: where replicas post their state ------------------------------------

class Board:
    """One small deployment holding each replica's latest state (node, loaded models,
    requests in flight) for /metrics, /readyz and `lokal models list --ray`."""

    def __init__(self) -> None:
        self._states: dict[str, tuple[float, dict[str, Any]]] = {}

    def report(self, state: dict[str, Any]) -> None:
        self._states[state["replica"]] = (time.monotonic(), state)

    def gone(self, replica: str) -> None:
        self._states.pop(replica, None)

    def snapshot(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        for key, (at, _) in list(self._states.items()):
            if now - at > STALE_AFTER:
                del self._states[key]
        return sorted((s for _, s in self._states.values()), key=lambda s: (s["node"], s["replica"]))


# The replica -------------------------------------------------------------------

def node_identity() -> dict[str, str]:
    import ray

    context = ray.get_runtime_context()
    return {"node": context.get_node_id(), "ip": ray.util.get_node_ip_address()}


class _Held:
    """What Serve's multiplexer keeps per model: unloading it frees the model's instances."""

    def __init__(self, name: str, registry: ModelRegistry, loop: asyncio.AbstractEventLoop) -> None:
        self.name = name
        self._registry = registry
        self._loop = loop
        self._released = False

    def __del__(self) -> None:  # Serve calls it on a thread when it evicts the model (LRU)
        if self._released:
            return
        self._released = True
        try:
            asyncio.get_running_loop()
            return  # garbage collection on the event loop: nothing to wait for here
        except RuntimeError:
            pass
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._registry.unload(self.name), self._loop).result(60)


class ModelReplica:
    """One replica of the models deployment: a real registry on this node.

    `lokal.scale.app` wraps it as a Serve deployment (with `serve.multiplexed` on
    `_model`, whose bound is a setting)."""

    async def __init__(self, options: dict[str, Any], expected: dict[str, dict[str, Any]],
                       board: Any, isolation: str = "process") -> None:
        from ray import serve

        self.identity = node_identity()
        self.identity["replica"] = serve.get_replica_context().replica_id.unique_id
        check_model_files(Path(options["models_path"]), expected, self.identity["node"])
        # ENGINE_ISOLATION holds on every node: an engine in a worker process of the replica
        # (a crash costs a restart, not the replica), and its token callbacks never wait
        # on the GIL that Ray's own threads in the replica hold.
        factory: dict[str, Any] = {}
        if isolation == "process":
            from lokal.engines.worker import WorkerFactory

            factory["engine_factory"] = WorkerFactory()
        self.registry = ModelRegistry(**options, **factory)
        self.registry.start_watchdog()
        self._board = board
        self._active = 0
        self._loop = asyncio.get_running_loop()
        self._reporter = asyncio.create_task(self._report_forever())
        log.info("model replica %s on node %s (%s) serving %d model(s)", self.identity["replica"],
                 self.identity["node"], self.identity["ip"], len(self.registry.entries))

    async def _load_model(self, name: str) -> _Held:
        return _Held(name, self.registry, self._loop)

    def state(self) -> dict[str, Any]:
        snapshot = self.registry.snapshot()
        return {**self.identity, "active": self._active, "at": time.time(),
                "models": [{"model": m.model, "purpose": m.purpose, "engine": m.engine,
                            "in_use": m.in_use, "slots": m.slots, "memory_bytes": m.memory_bytes}
                           for m in snapshot.loaded]}

    async def _report_forever(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self._board.report.remote(self.state())
            await asyncio.sleep(REPORT_INTERVAL)

    async def generate(self, task: str, mode: str, body: dict[str, Any],
                       streamed: bool = True) -> AsyncIterator[tuple[str, Any]]:
        """Chunks of one chat or completion, in batches as the engine makes them (every
        STREAM_INTERVAL, or WHOLE_INTERVAL when the client is not streaming); first this
        replica's identity, an ("error", data) item for a failure."""
        from ray import serve

        yield ("node", self.identity)
        name = serve.get_multiplexed_model_id()
        self._active += 1
        try:
            await self._model(name)  # type: ignore[attr-defined]
            async with self.registry.lease(name, task) as lease:
                cancel = threading.Event()
                run = lease.engine.chat if mode == "chat" else lease.engine.complete
                finished = asyncio.Event()
                release = lease.hold()

                def done() -> None:
                    finished.set()
                    release()

                chunks = guarded(engine_chunks(lambda sink: run(body, sink), cancel, on_done=done),
                                 cancel, timeout=None, busy=lease.busy_timeout, on_stuck=lease.retire)
                try:
                    async for batch in chunks:
                        yield ("chunks", batch)
                        # The engine goes on and its chunks gather, until the interval is up
                        # or the answer is complete (its end is never held back).
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(finished.wait(),
                                                   STREAM_INTERVAL if streamed else WHOLE_INTERVAL)
                finally:
                    cancel.set()  # a cancelled stream (client gone) stops the engine here
                    await chunks.aclose()
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:  # noqa: BLE001 - every failure goes back as data
            yield ("error", encode_error(exc))
        finally:
            self._active -= 1

    async def call(self, task: str, op: str, args: tuple[Any, ...]) -> tuple[str, dict[str, str], Any]:
        """One answer-at-once call: describe, embed, rerank or transcribe."""
        from ray import serve

        name = serve.get_multiplexed_model_id()
        self._active += 1
        try:
            await self._model(name)  # type: ignore[attr-defined]
            async with self.registry.lease(name, task) as lease:
                if op == "describe":
                    value: Any = {"slots": lease.engine.slots, "dimensions": lease.engine.dimensions,
                                  "busy_timeout": lease.busy_timeout}
                elif op == "embed":
                    value = await lease.embed(*args)
                elif op == "rerank":
                    value = await lease.run(lease.engine.rerank, *args)
                elif op == "transcribe":
                    audio, kwargs = args
                    value = await lease.run(lambda: lease.engine.transcribe(audio, **kwargs))
                else:
                    raise errors.ServerError(f"unknown replica call {op!r}")
            return ("ok", self.identity, value)
        except Exception as exc:  # noqa: BLE001 - every failure goes back as data
            return ("error", self.identity, encode_error(exc))
        finally:
            self._active -= 1

    async def __del__(self) -> None:
        # (Its board entry goes stale on its own: the board may be gone already.)
        self._reporter.cancel()
        await self.registry.close()


# The ingress side ------------------------------------------------------------------

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


class RayRegistry(ModelRegistry):
    """The ingress's registry: the local catalog, and leases on the model replicas."""

    def __init__(self, models: Any, board: Any, **options: Any) -> None:
        super().__init__(**options)
        self.models = models  # DeploymentHandle of the model replicas
        self.view = ClusterView(board)
        self._described: dict[tuple[str, str], dict[str, Any]] = {}
        self._busy_timeout = options.get("busy_timeout")

    def snapshot(self) -> RegistryState:
        """The loaded instances summed over replicas (per replica: lokal_replica_* metrics)."""
        state = RegistryState(known=len(self.catalog.entries))
        total: dict[tuple[str, str], ModelState] = {}
        for replica in self.view.replicas:
            for m in replica["models"]:
                key = (m["model"], m["purpose"])
                seen = total.get(key)
                if seen is None:
                    total[key] = ModelState(model=m["model"], purpose=m["purpose"], engine=m["engine"],
                                            in_use=m["in_use"], slots=m["slots"],
                                            memory_bytes=m["memory_bytes"])
                else:
                    seen.in_use += m["in_use"]
                    if m["slots"] is not None:
                        seen.slots = (seen.slots or 0) + m["slots"]
                    if m["memory_bytes"] is not None:
                        seen.memory_bytes = (seen.memory_bytes or 0) + m["memory_bytes"]
        state.loaded.extend(total.values())
        return state

    @contextlib.asynccontextmanager
    async def lease(self, name: str, task: str) -> AsyncIterator[RemoteLease]:  # type: ignore[override]
        self.permit(name)  # a model the request's key may not use: 403
        logs.annotate(model=name)
        entry = self.catalog.entry(name)  # unknown: 404, never another model
        await self.catalog.ready(entry)
        plan = plan_load(entry, task, self.defaults)  # a task the model cannot do: 400
        caller = keys.current_caller()
        if caller is not None:
            caller.admit()  # the key's limits (429); replicas queue their slots without keys
        box = served_by.get()

        def on_node(node: dict[str, str]) -> None:
            if box is not None:
                box["node"] = node

        key = (name, plan.instance)
        described = self._described.get(key)
        if described is None:
            probe = RemoteEngine(self.models, name, task, slots=None, dimensions=None, on_node=on_node)
            described = await probe.unary_async("describe")
            self._described[key] = described
        engine = RemoteEngine(self.models, name, task, slots=described["slots"],
                              dimensions=described["dimensions"], on_node=on_node)
        yield RemoteLease(entry, engine, described.get("busy_timeout"))

    def is_loaded(self, name: str) -> bool:
        return any(m["model"] == name for r in self.view.replicas for m in r["models"])

    @property
    def loaded_count(self) -> int:
        return len({m["model"] for r in self.view.replicas for m in r["models"]})

    async def unload(self, name: str) -> bool:
        self.catalog.entry(name)
        raise errors.Conflict("Unloading a model is not available on a Ray cluster: replicas unload "
                              "models by LRU (MAX_ACTIVE_BACKENDS) and WATCHDOG_IDLE_TIMEOUT.")

    def start_watchdog(self) -> None:
        self.view.start()  # the replicas run their own watchdogs

    async def close(self) -> None:
        self.view.stop()
