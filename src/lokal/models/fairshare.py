"""Fair share of an engine's slots across API keys: start-time fair queueing.

Requests that wait for slots are not served first come, first served: each key
(a *flow*; requests without a named key share the flow "") gets slots in turn,
in proportion to its weight. Each request is tagged on arrival with a virtual
start time, `max(now_virtual, the flow's last finish)`, and finishes at
`start + slots / weight`; waiting requests are granted in order of their start
tags, and the virtual clock is the start tag of the last request granted. So a
key that queued 40 requests has tags far ahead of the clock, and a request of
another key, tagged at the clock, is granted at the next free slot: one key's
burst holds another's request behind at most one slot's turnover. An idle key
banks nothing: its next request starts at the clock.

With one flow the tags follow arrival order: the queue is first come, first
served, and a request that needs more slots than are free lets a later one that
fits go first (as a plain condition-variable wait did).
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Share:
    """Whose request waits: a flow (an API key's name) and its weight."""

    flow: str = ""
    weight: float = 1.0


ANONYMOUS = Share()


@dataclass(order=True)
class _Waiter:
    start: float
    seq: int
    n: int = field(compare=False)
    future: asyncio.Future[None] = field(compare=False)


class FairQueue:
    """`count` slots handed out to waiting requests by weighted fair queueing."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.free = count
        self._clock = 0.0  # virtual time: the start tag of the last request granted
        self._finish: dict[str, float] = {}  # flow -> finish tag of its last request
        self._waiters: list[_Waiter] = []  # sorted by (start tag, arrival)
        self._seq = itertools.count()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def take(self, n: int, share: Share | None = None) -> Callable[[], None]:
        """Wait for n slots (at most count); the function returned gives them back (once)."""
        n = min(max(1, n), self.count)
        share = share or ANONYMOUS
        start = max(self._clock, self._finish.get(share.flow, 0.0))
        self._finish[share.flow] = start + n / share.weight
        waiter = _Waiter(start, next(self._seq), n, asyncio.get_running_loop().create_future())
        bisect.insort(self._waiters, waiter)
        self._grant()
        try:
            await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                self._give(n)  # granted as it was cancelled: the slots go to the next one
            else:
                self._remove(waiter)
            raise
        given = False

        def give_back() -> None:
            nonlocal given
            if not given:
                given = True
                self._give(n)

        return give_back

    def _give(self, n: int) -> None:
        self.free += n
        self._grant()

    def _remove(self, waiter: _Waiter) -> None:
        at = bisect.bisect_left(self._waiters, waiter)
        if at < len(self._waiters) and self._waiters[at] is waiter:
            del self._waiters[at]
        if not waiter.future.done():
            waiter.future.cancel()

    def _grant(self) -> None:
        """Grant waiting requests in tag order while slots are free (one that needs more
        than are free is passed over by later ones that fit)."""
        at = 0
        while at < len(self._waiters) and self.free > 0:
            waiter = self._waiters[at]
            if waiter.future.done():  # cancelled while waiting
                del self._waiters[at]
                continue
            if waiter.n > self.free:
                at += 1
                continue
            del self._waiters[at]
            self.free -= waiter.n
            self._clock = max(self._clock, waiter.start)
            waiter.future.set_result(None)
        if not self._waiters and len(self._finish) > 1:
            # Flows whose last finish is behind the clock would start at the clock anyway.
            self._finish = {f: t for f, t in self._finish.items() if t > self._clock}
