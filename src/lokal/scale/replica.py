"""The model replicas of a Ray cluster, and the board where they post their state.

A model replica (`ModelReplica`) is a Ray Serve replica holding a real registry on
its node (`models.registry.local_registry`): the catalog of that node's models folder
and a pool with the usual rules (load once, LRU under MAX_ACTIVE_BACKENDS, idle
unload, slots and queue, busy watchdog). Requests carry the model name as Ray
Serve's multiplexed model id, so Serve routes a request for model M to a replica
that has M loaded when one has room. A replica streams a generation's chunks in
batches (every STREAM_INTERVAL, or WHOLE_INTERVAL for a client reading the answer
whole) and sends every failure back as data (`scale.wire`).

Nothing here is imported unless `lokal serve --ray` runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from lokal import errors
from lokal.models.generation import engine_chunks, guarded
from lokal.models.registry import ModelRegistry, local_registry
from lokal.scale.wire import REPORT_INTERVAL, STALE_AFTER, check_model_files, encode_error

log = logging.getLogger(__name__)

#: A replica sends a generation's chunks at most this often (the first batch at once):
#: every item of a Ray stream is an object that crosses processes, a cost in CPU on both
#: sides paid per item, so tokens that arrive within the interval travel together.
STREAM_INTERVAL = 0.02
#: ... and for a client that reads the answer whole: it only needs the end (the ingress's
#: busy watchdog hears from the replica at least this often; the end is never held back).
WHOLE_INTERVAL = 1.0


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
            from lokal.engines.worker.client import WorkerFactory

            factory["engine_factory"] = WorkerFactory()
        self.registry = local_registry(**options, **factory)
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
        return {**self.identity, "active": self._active, "at": time.time(),
                "models": [{"model": i.model, "purpose": i.purpose, "engine": i.engine, "in_use": i.in_use,
                            "slots": i.slots, "memory_bytes": i.memory_bytes, "idle_seconds": i.idle_seconds,
                            "pid": i.pid} for i in self.registry.status().instances]}

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
