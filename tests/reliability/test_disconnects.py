"""Clients that go away: 200 dropped requests in a row leave no trace.

Against one server with two slots, two clients (one per slot) each start 100 long
generations in a row (thousands of tokens asked for, end-of-sequence banned) and
drop them: streams after a chunk or three, whole answers by timing out. Afterwards
no slot is still generating (two normal requests, one per slot, complete, where a
leaked slot would hold one of them behind minutes of generation; and the process
idles: under 0.3 CPU-seconds in a 2-second window, where one running generation
burns its threads' worth), /metrics' in-flight gauge is back at its baseline, the
process has no more threads than before (plus a small margin), and its RSS grew at
most 5 % over the baseline taken after a warm-up of the same shape.

The last test guards the host-memory prompt cache: llama.cpp's default (8 GiB per
model) grew with every finished generation longer than its prompt, dropped or not;
lokal bounds it with PROMPT_CACHE_RAM (default 0).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import LokalServer, place_model
from tests.reliability import CHAT_CONFIG, CHAT_MODEL, cpu_seconds, in_flight, rss_mb, threads

pytestmark = pytest.mark.slow  # 200 dropped requests and 24 finished ones: minutes

DROPS = 200
WARM_UP = 20
TIME_LIMIT = 600.0       # the whole drop loop, warm-up included (about 150 s on an idle 2-core box)
THREAD_MARGIN = 4
RSS_GROWTH = 0.05
SETTLE = 30.0            # seconds the server may take to notice the last drops
IDLE_CPU = 0.3           # CPU-seconds in a 2 s window that count as idle

# A long prompt: llama.cpp's slot reuse keeps it (most of the slot is the prompt), so the
# engine's host-memory prompt cache does not store a state per drop (see the last test).
PROMPT = ("Write a very long story about a lighthouse. "
          + "The keeper lives alone on a rock far out at sea, and every night he climbs the stairs "
            "to light the lamp. " * 12)
LONG = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 3000, "temperature": 1.0, "logit_bias": {"2": -100}}  # 2: <|im_end|>, SmolLM2's EOS


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LokalServer]:
    models = tmp_path_factory.mktemp("drops") / "models"
    place_model(models)
    (models / f"{CHAT_MODEL}.yaml").write_text(CHAT_CONFIG)
    with LokalServer(models, "--parallel-requests", "2", "--context-size", "4096",
                     "--preload-models", CHAT_MODEL) as srv:
        srv.wait_ready(180)
        yield srv


def drop(base: str, index: int) -> str:
    """One dropped request; the kind depends on index. Returns what happened."""
    kind = index % 4
    with httpx.Client(base_url=base, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        if kind in (0, 2):  # a stream, dropped after 3 chunks or after the first
            wanted = 3 if kind == 0 else 1
            with client.stream("POST", "/v1/chat/completions", json=dict(LONG, stream=True),
                               timeout=httpx.Timeout(120, connect=10)) as response:
                assert response.status_code == 200, response.read()
                seen = 0
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        seen += 1
                        if seen >= wanted:
                            break
            return f"stream-{wanted}"
        try:  # a whole answer, its client timing out
            response = client.post("/v1/chat/completions", json=LONG,
                                   timeout=httpx.Timeout(0.3 if kind == 1 else 1.0, connect=10))
        except httpx.ReadTimeout:
            return "timeout"
        return f"answered-{response.status_code}"


def settle(server: LokalServer, baseline_threads: int) -> tuple[int, int, list[float]]:
    """Threads, requests in flight (the /metrics request itself counts) and CPU-seconds
    per 2 s window, once the server is idle again or SETTLE has passed."""
    pid = server.proc.pid
    deadline = time.monotonic() + SETTLE
    windows: list[float] = []
    while True:
        before = cpu_seconds(pid)
        time.sleep(2)
        windows.append(cpu_seconds(pid) - before)
        count = threads(pid)
        flying = in_flight(httpx.get(f"{server.base}/metrics", timeout=30).text)
        if (windows[-1] < IDLE_CPU and flying <= 1 and count <= baseline_threads + THREAD_MARGIN) \
                or time.monotonic() > deadline:
            return count, flying, windows


@pytest.mark.timeout(TIME_LIMIT + 200)
def test_two_hundred_drops_leave_no_trace(server: LokalServer) -> None:
    pid = server.proc.pid
    started = time.monotonic()
    outcomes: dict[str, int] = {}
    done = 0
    lock = threading.Lock()
    failures: list[BaseException] = []

    def dropper(first: int, count: int, counted: bool) -> None:
        nonlocal done
        for index in range(first, count, 2):
            if time.monotonic() - started > TIME_LIMIT or failures:
                return
            try:
                outcome = drop(server.base, index)  # one client streams, the other times out
            except BaseException as exc:  # noqa: BLE001 - reported below
                failures.append(exc)
                return
            with lock:
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
                if not counted:
                    continue
                done += 1
                if done % 50 == 0:
                    print(f"\n  {done} drops, {time.monotonic() - started:.0f}s, threads {threads(pid)}, "
                          f"RSS {rss_mb(pid):.1f} MB", flush=True)

    def drops(count: int, counted: bool) -> None:
        """count drops by two clients at once (one per slot)."""
        workers = [threading.Thread(target=dropper, args=(first, count, counted)) for first in (0, 1)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(TIME_LIMIT + 60)

    # The warm-up has the same shape as the run, so the baseline already holds what two
    # concurrent requests need (engine buffers, allocator arenas of their threads).
    drops(WARM_UP, counted=False)
    base_threads, base_flying, _ = settle(server, 10**6)
    base_rss = rss_mb(pid)
    drops(DROPS, counted=True)
    assert not failures, failures
    assert server.proc.poll() is None, server.log()[-3000:]
    drops_took = time.monotonic() - started

    after_threads, after_flying, windows = settle(server, base_threads)
    after_rss = rss_mb(pid)

    # Both slots free: two normal requests at once both complete. A leaked slot would
    # still be generating its 3000 tokens and hold one of them far past the timeout.
    replies: list[httpx.Response | Exception] = []

    def normal() -> None:
        try:
            replies.append(httpx.post(f"{server.base}/v1/chat/completions", timeout=60, json={
                "model": CHAT_MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}))
        except httpx.HTTPError as exc:
            replies.append(exc)

    normal_started = time.monotonic()
    workers = [threading.Thread(target=normal) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(90)
    normal_took = time.monotonic() - normal_started

    growth = (after_rss - base_rss) / base_rss
    print(f"\n{done} drops after {WARM_UP} warm-up drops in {drops_took:.0f}s; all of them: "
          f"{dict(sorted(outcomes.items()))}")
    print(f"threads {base_threads} -> {after_threads}; in flight {base_flying} -> {after_flying}; "
          f"RSS {base_rss:.1f} MB -> {after_rss:.1f} MB ({growth * 100:+.2f} %); "
          f"two normal requests after: {normal_took:.1f}s; CPU-seconds per 2 s window after: "
          f"{[round(w, 2) for w in windows]}")

    assert done == DROPS, f"only {done} drops within {TIME_LIMIT:.0f}s"
    assert all(isinstance(r, httpx.Response) and r.status_code == 200 for r in replies) and len(replies) == 2, replies
    assert windows and windows[-1] < IDLE_CPU, f"the server kept computing after the drops: {windows}"
    assert base_flying == 1 and after_flying == 1, f"in flight {base_flying} -> {after_flying} (1: /metrics itself)"
    assert after_threads <= base_threads + THREAD_MARGIN, f"threads {base_threads} -> {after_threads}"
    assert growth <= RSS_GROWTH, f"RSS grew {growth * 100:.1f} % ({base_rss:.1f} -> {after_rss:.1f} MB)"
    assert server.proc.poll() is None


@pytest.mark.timeout(600)
def test_memory_stays_flat_over_completed_requests(server: LokalServer) -> None:
    pid = server.proc.pid
    # A short prompt and 100 tokens: the answer is most of the slot, as in real chats.
    body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "Write a story about a lighthouse."}],
            "max_tokens": 100, "temperature": 1.0, "logit_bias": {"2": -100}}

    def run(count: int, offset: int) -> None:
        with httpx.Client(base_url=server.base, timeout=300) as client:
            for n in range(count):
                r = client.post("/v1/chat/completions", json=dict(body, seed=offset + n))
                assert r.status_code == 200, r.text

    run(4, 0)
    before = rss_mb(pid)
    workers = [threading.Thread(target=run, args=(12, 1000 * (i + 1))) for i in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(540)
    after = rss_mb(pid)
    growth = (after - before) / before
    print(f"\n24 finished 100-token chats: RSS {before:.1f} MB -> {after:.1f} MB ({growth * 100:+.1f} %)")
    assert growth <= RSS_GROWTH, f"RSS grew {growth * 100:.1f} % over 24 requests"
