"""The fair queue of an engine's slots, on its own: order of grants by key and weight."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from lokal.models.fairshare import FairQueue, Share


async def _queue_up(queue: FairQueue, requests: list[tuple[str, Share | None, int]],
                    order: list[str]) -> tuple[list[asyncio.Task[Callable[[], None]]], dict[str, Callable[[], None]]]:
    """Start a take() per request, in order; each records its name when granted."""
    given: dict[str, Callable[[], None]] = {}

    async def one(name: str, share: Share | None, n: int) -> Callable[[], None]:
        give = await queue.take(n, share)
        order.append(name)
        given[name] = give
        return give

    tasks = []
    for name, share, n in requests:
        tasks.append(asyncio.create_task(one(name, share, n)))
        await asyncio.sleep(0)  # arrival order = this order
    await asyncio.sleep(0)
    return tasks, given


async def _drain(given: dict[str, Callable[[], None]], order: list[str], count: int) -> None:
    """Give back the oldest grant, one at a time, until count grants were made."""
    released = 0
    while len(order) < count:
        given[order[released]]()
        released += 1
        for _ in range(3):
            await asyncio.sleep(0)


def test_one_flow_is_first_come_first_served() -> None:
    async def go() -> list[str]:
        queue = FairQueue(1)
        order: list[str] = []
        _tasks, given = await _queue_up(queue, [(f"r{i}", None, 1) for i in range(6)], order)
        await _drain(given, order, 6)
        return order

    assert asyncio.run(go()) == [f"r{i}" for i in range(6)]


def test_flows_take_turns_by_weight() -> None:
    async def go() -> list[str]:
        queue = FairQueue(1)
        order: list[str] = []
        a, b = Share("a", 1.0), Share("b", 2.0)
        requests = [(f"a{i}", a, 1) for i in range(12)] + [(f"b{i}", b, 1) for i in range(12)]
        _tasks, given = await _queue_up(queue, requests, order)
        await _drain(given, order, 13)
        return order

    order = asyncio.run(go())
    # a0 had the slot; from then on b (weight 2) gets two turns for each of a's.
    assert order[:1] == ["a0"]
    window = order[1:13]
    assert sum(1 for n in window if n.startswith("b")) == 8 and sum(1 for n in window if n.startswith("a")) == 4
    assert [n for n in order if n.startswith("a")] == sorted((n for n in order if n.startswith("a")),
                                                               key=lambda n: int(n[1:]))  # FIFO in a flow


def test_an_idle_flow_banks_nothing() -> None:
    async def go() -> list[str]:
        queue = FairQueue(1)
        order: list[str] = []
        a, b = Share("a"), Share("b")
        # b was served alone for a while, then a arrives while b asks again: neither a's idle
        # time nor b's past turns count; from the clock on they alternate (x was b's turn).
        _tasks, given = await _queue_up(queue, [(f"b{i}", b, 1) for i in range(5)], order)
        await _drain(given, order, 5)
        given[order[-1]]()
        order.clear()
        _tasks, given = await _queue_up(queue, [("x", b, 1)] + [(f"a{i}", a, 1) for i in range(3)]
                                        + [(f"b{i}", b, 1) for i in range(5, 8)], order)
        await _drain(given, order, 7)
        return order

    assert asyncio.run(go()) == ["x", "a0", "a1", "b5", "a2", "b6", "b7"]


def test_a_request_that_needs_more_slots_lets_smaller_ones_pass() -> None:
    async def go() -> list[str]:
        queue = FairQueue(2)
        order: list[str] = []
        _tasks, given = await _queue_up(queue, [("one", None, 1), ("two", None, 2), ("three", None, 1)], order)
        return order

    # "two" needs both slots: "three" takes the second meanwhile (as before fair share).
    assert asyncio.run(go()) == ["one", "three"]


def test_a_cancelled_wait_leaves_the_queue_and_a_late_grant_goes_back() -> None:
    async def go() -> tuple[list[str], int, int]:
        queue = FairQueue(1)
        order: list[str] = []
        tasks, given = await _queue_up(queue, [("r0", None, 1), ("r1", None, 1), ("r2", None, 1)], order)
        tasks[1].cancel()
        await asyncio.sleep(0)
        waiting = queue.waiting
        given["r0"]()  # r1 left: r2 is next
        await asyncio.sleep(0)
        # A grant that arrives as its waiter is cancelled is given back.
        late = asyncio.create_task(queue.take(1))
        await asyncio.sleep(0)
        given["r2"]()
        late.cancel()
        await asyncio.sleep(0)
        return order, waiting, queue.free

    order, waiting, free = asyncio.run(go())
    assert order == ["r0", "r2"] and waiting == 1 and free == 1
