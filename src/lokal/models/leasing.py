"""What a pool of loaded models promises, whoever keeps it: the `Lease` a request holds
and the `Pool` that lends it, and the status the pool reports.

Two pools implement them: `models.pool.LocalPool` (engines on this machine, in
worker processes or in-process) and `scale.ingress.RemotePool` (engines on the model
replicas of a Ray cluster). The registry is assembled from a catalog and one of them;
nothing above the registry knows which.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from lokal.engines.base import Embeddings, Engine
from lokal.models.fairshare import Share
from lokal.models.planner import LoadPlan


class Lease(Protocol):
    """A loaded model held for one request."""

    entry: Any  # the catalog entry it serves
    engine: Engine
    busy_timeout: float | None

    def hold(self) -> Callable[[], None]:
        """Keep the model for an engine call running on another thread; call the
        returned function (on the event loop) when the call has returned."""
        ...

    async def admit(self, n: int) -> Callable[[], None]:
        """Wait for n of the engine's slots; call the function returned when done."""
        ...

    def retire(self) -> None:
        """The engine stopped responding: take it out of service."""
        ...

    async def embed(self, inputs: list[str] | list[list[int]], truncate: bool | None = None) -> Embeddings:
        ...

    async def run(self, function: Callable[..., Any], *args: Any) -> Any:
        """A blocking engine call on a thread, the model held until it returns."""
        ...


@dataclass(frozen=True)
class InstanceStatus:
    """One loaded engine instance."""

    model: str
    purpose: str  # generate, embed, rerank, transcribe, speak, ...
    engine: str
    in_use: int
    slots: int | None
    memory_bytes: int | None
    idle_seconds: float = 0.0
    pid: int | None = None
    node: str | None = None  # the Ray node holding it


@dataclass(frozen=True)
class PoolStatus:
    """What a pool holds now."""

    instances: list[InstanceStatus] = field(default_factory=list)
    loading: frozenset[str] = frozenset()  # models being loaded now
    failed: dict[str, str] = field(default_factory=dict)  # models refused after crashes, and why
    restarts: int = 0  # engine instances replaced after a crash or a hang
    idle_timeout: float | None = None  # seconds an idle instance stays loaded (None: forever)

    def of(self, model: str) -> list[InstanceStatus]:
        return [i for i in self.instances if i.model == model]


class Pool(Protocol):
    """Loaded engine instances, lent to requests."""

    def lease(self, entry: Any, plan: LoadPlan, share: Share | None = None) -> AbstractAsyncContextManager[Lease]:
        """The planned instance of entry, loaded, held for the block."""
        ...

    async def unload(self, name: str) -> bool:
        """Unload a model's instances once their requests are done; False if none was loaded."""
        ...

    def clear_failures(self, name: str | None = None) -> None:
        """Let a model refused after repeated crashes (or every one) load again."""
        ...

    def status(self) -> PoolStatus:
        ...

    def want_spares(self, models: dict[str, set[str]]) -> None:
        """The servable models by the engine kind they load with: a pool that starts engine
        workers ahead keeps one per kind that has a model not loaded yet."""
        ...

    def start_watchdog(self) -> None:
        ...

    async def close(self) -> None:
        ...
