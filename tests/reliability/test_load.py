"""Load: 64 concurrent clients on the demo models, and a full queue's 429s.

64 clients send chat streams (max_tokens <= 16), text completions and embeddings
for a bounded time (30 s or 300 requests, whichever comes first; requests already
sent then finish). At the default queue size every one succeeds. Then, against a
server with one slot and a queue of two, 16 concurrent chats: those beyond the
slot and queue get 429 with Retry-After at once; none times out or fails with 5xx.
"""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path

import httpx
import pytest

from bench.soak import request_for  # the soak sends this same traffic, for longer
from tests.conftest import LokalServer
from tests.reliability import (CHAT_MODEL, EMBED_MODEL, demo_models, envelope_problem, percentile,
                               rss_mb, stream_errors, threads)

pytestmark = pytest.mark.slow  # 64 clients for 30 s, then a queue under load

CLIENTS = 64
DURATION = 30.0
MAX_REQUESTS = 300
REQUEST_TIMEOUT = 240.0   # a queued request waits its turn behind 63 others on two cores


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_models(tmp_path_factory.mktemp("load") / "models")


class Results:
    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = collections.defaultdict(list)
        self.statuses: collections.Counter[tuple[str, int | str]] = collections.Counter()
        self.problems: list[str] = []
        self.sent = 0

    @property
    def all_latencies(self) -> list[float]:
        return [v for values in self.latencies.values() for v in values]

    @property
    def errors(self) -> dict[str, int]:
        return {f"{kind} {status}": n for (kind, status), n in self.statuses.items() if status != 200}


async def one(client: httpx.AsyncClient, kind: str, n: int, results: Results) -> None:
    path, body = request_for(kind, n)
    started = time.monotonic()
    try:
        if kind == "chat":
            async with client.stream("POST", path, json=body) as response:
                text = (await response.aread()).decode()
        else:
            response = await client.post(path, json=body)
            text = response.text
    except httpx.HTTPError as exc:
        results.statuses[(kind, type(exc).__name__)] += 1
        results.problems.append(f"{kind}: {exc!r}")
        return
    results.latencies[kind].append(time.monotonic() - started)
    results.statuses[(kind, response.status_code)] += 1
    if response.status_code != 200:
        results.problems.append(f"{kind} {response.status_code}: {text[:300]}")
    elif kind == "chat":
        if stream_errors(text) or not text.rstrip().endswith("data: [DONE]"):
            results.problems.append(f"chat stream ended badly: {text[-300:]}")
            results.statuses[(kind, "bad-stream")] += 1


async def drive(base: str, results: Results) -> float:
    """CLIENTS clients, each sending one request after another until time or count runs out."""
    kinds = ("chat", "completion", "embeddings")
    deadline = time.monotonic() + DURATION
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(REQUEST_TIMEOUT, connect=30),
                                 limits=limits) as client:
        async def worker(index: int) -> None:
            turn = 0
            while time.monotonic() < deadline and results.sent < MAX_REQUESTS:
                n = results.sent
                results.sent += 1
                await one(client, kinds[(index + turn) % 3], n, results)
                turn += 1

        started = time.monotonic()
        await asyncio.gather(*(worker(i) for i in range(CLIENTS)))
        return time.monotonic() - started


@pytest.mark.timeout(600)
def test_64_clients_mixed_load(demo: Path) -> None:
    with LokalServer(demo, "--preload-models", f"{CHAT_MODEL},{EMBED_MODEL}") as server:
        server.wait_ready(180)
        pid = server.proc.pid
        rss_before, threads_before = rss_mb(pid), threads(pid)
        results = Results()
        took = asyncio.run(drive(server.base, results))
        rss_after, threads_after = rss_mb(pid), threads(pid)
        alive = server.proc.poll() is None

    lat = results.all_latencies
    print(f"\n{CLIENTS} clients, {sum(results.statuses.values())} requests in {took:.1f}s "
          f"({sum(results.statuses.values()) / took:.1f}/s); errors by status: {results.errors or 'none'}")
    for kind, values in sorted(results.latencies.items()):
        print(f"  {kind:10} {len(values):4} requests  p50 {percentile(values, 50):6.2f}s  "
              f"p99 {percentile(values, 99):6.2f}s")
    print(f"  all        {len(lat):4} requests  p50 {percentile(lat, 50):6.2f}s  p99 {percentile(lat, 99):6.2f}s")
    print(f"server RSS {rss_before:.0f} MB -> {rss_after:.0f} MB, threads {threads_before} -> {threads_after}")
    for problem in results.problems[:10]:
        print("PROBLEM", problem)

    assert alive
    assert not results.errors, results.errors
    assert all(results.latencies[k] for k in ("chat", "completion", "embeddings")), dict(results.latencies)


@pytest.mark.timeout(300)
def test_full_queue_answers_429_and_nothing_times_out(demo: Path) -> None:
    with LokalServer(demo, "--parallel-requests", "1", "--queue-size", "2",
                     "--preload-models", CHAT_MODEL) as server:
        server.wait_ready(180)

        async def burst() -> list[httpx.Response | Exception]:
            async with httpx.AsyncClient(base_url=server.base, timeout=httpx.Timeout(REQUEST_TIMEOUT, connect=30),
                                         limits=httpx.Limits(max_connections=16)) as client:
                async def chat(n: int) -> httpx.Response | Exception:
                    try:
                        return await client.post("/v1/chat/completions", json={
                            "model": CHAT_MODEL, "max_tokens": 16, "temperature": 1.0, "logit_bias": {"2": -100},
                            "messages": [{"role": "user", "content": f"Request {n}: tell a story."}]})
                    except httpx.HTTPError as exc:
                        return exc

                return await asyncio.gather(*(chat(n) for n in range(16)))

        started = time.monotonic()
        replies = asyncio.run(burst())
        took = time.monotonic() - started
        after = httpx.post(f"{server.base}/v1/chat/completions", timeout=120, json={
            "model": CHAT_MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
        alive = server.proc.poll() is None

    failures = [r for r in replies if not isinstance(r, httpx.Response)]
    statuses = collections.Counter(r.status_code for r in replies if isinstance(r, httpx.Response))
    print(f"\n16 concurrent chats, 1 slot + queue 2: {dict(sorted(statuses.items()))} in {took:.1f}s; "
          f"client errors: {failures or 'none'}")
    assert not failures, failures
    assert set(statuses) <= {200, 429}, statuses
    assert statuses[429] >= 1 and statuses[200] >= 1, statuses
    assert statuses[200] >= 3, statuses  # the slot and both queue places were used
    for reply in replies:
        assert isinstance(reply, httpx.Response)
        if reply.status_code == 429:
            assert reply.headers.get("retry-after", "").isdigit(), dict(reply.headers)
            assert envelope_problem(429, reply.text) is None, reply.text
            assert reply.json()["error"]["type"] == "rate_limit_error"
    assert after.status_code == 200, after.text
    assert alive
