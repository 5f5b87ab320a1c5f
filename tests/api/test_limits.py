"""Bounded queues (429 + Retry-After), request timeouts, and the busy watchdog."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from tests.conftest import LokalServer, place_model

NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
LONG = {"model": NAME, "messages": [{"role": "user", "content": "Write a very long story."}],
        "max_tokens": 150, "temperature": 1.0}


def test_long_prompts_at_once_each_get_a_whole_context(tmp_path: Path) -> None:
    # Four prompts that each fit the context, all at once: every slot has a context of
    # its own. (With one shared KV pool the four filled it and all four failed with 500.)
    place_model(tmp_path / "models")
    with LokalServer(tmp_path / "models", "--parallel-requests", "4", "--context-size", "512") as server:
        async def one(client: httpx.AsyncClient, i: int) -> httpx.Response:
            text = f"Note {i}: " + "alpha beta gamma delta epsilon zeta eta theta " * 30 + "\nSummarize."
            return await client.post("/v1/chat/completions", json={
                "model": NAME, "messages": [{"role": "user", "content": text}], "max_tokens": 120,
                "ignore_eos": True, "seed": i})

        async def main() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.base, timeout=600) as client:
                return await asyncio.gather(*[one(client, i) for i in range(4)])

        replies = asyncio.run(main())
        assert [r.status_code for r in replies] == [200] * 4, [r.text[:200] for r in replies]
        for r in replies:
            usage = r.json()["usage"]
            assert usage["completion_tokens"] == 120 and 300 < usage["prompt_tokens"] < 512 - 120


def test_full_queue_answers_429_with_retry_after(tmp_path: Path) -> None:
    place_model(tmp_path / "models")
    with LokalServer(tmp_path / "models", "--parallel-requests", "1", "--queue-size", "1") as server:
        async def main() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.base, timeout=600) as client:
                await client.post("/v1/chat/completions", json=dict(LONG, max_tokens=1))  # load it
                return await asyncio.gather(*[client.post("/v1/chat/completions", json=LONG)
                                              for _ in range(4)])

        replies = asyncio.run(main())
        statuses = sorted(r.status_code for r in replies)
        assert statuses == [200, 200, 429, 429], statuses
        busy = next(r for r in replies if r.status_code == 429)
        assert busy.headers["retry-after"] == "1"
        assert busy.json()["error"]["type"] == "rate_limit_error"
        # The queue drains: the server answers again.
        r = httpx.post(f"{server.base}/v1/chat/completions", json=dict(LONG, max_tokens=2), timeout=60)
        assert r.status_code == 200


def test_request_timeout_ends_generation(tmp_path: Path) -> None:
    place_model(tmp_path / "models")
    with LokalServer(tmp_path / "models", "--parallel-requests", "1") as server:
        http = httpx.Client(base_url=server.base, timeout=120)
        http.post("/v1/chat/completions", json=dict(LONG, max_tokens=1))
        r = http.post("/v1/chat/completions", json=dict(LONG, max_tokens=3000, timeout=0.5))
        assert r.status_code == 408, r.text
        assert r.json()["error"]["type"] == "timeout_error"
        # The slot was freed: a short request right after is answered at once.
        r = http.post("/v1/chat/completions", json=dict(LONG, max_tokens=2), timeout=10)
        assert r.status_code == 200
        with http.stream("POST", "/v1/chat/completions", json=dict(LONG, max_tokens=3000, timeout=0.5,
                                                                   stream=True)) as s:
            lines = [line for line in s.iter_lines() if line.startswith("data: ")]
        assert '"timeout_error"' in lines[-2] and lines[-1] == "data: [DONE]"


def test_busy_watchdog_ends_the_request_and_reloads(tmp_path: Path) -> None:
    place_model(tmp_path / "models")
    # A watchdog this short takes a long prompt's processing for a stuck engine.
    with LokalServer(tmp_path / "models", "--watchdog-busy-timeout", "0.02") as server:
        http = httpx.Client(base_url=server.base, timeout=120)
        r = http.post("/v1/chat/completions", json={
            "model": NAME, "messages": [{"role": "user", "content": "lorem ipsum " * 600}], "max_tokens": 2})
        assert r.status_code == 500
        assert "WATCHDOG_BUSY_TIMEOUT" in r.json()["error"]["message"]
        server.wait_log("stopped responding: retired")
        loads = server.log().count(f"loading model {NAME}")
        http.post("/v1/chat/completions", json={"model": NAME, "messages": [{"role": "user", "content": "x"}],
                                                "max_tokens": 1})
        assert server.log().count(f"loading model {NAME}") == loads + 1


def test_sigterm_lets_requests_finish_then_ends_them_with_an_error(tmp_path: Path) -> None:
    import json
    import signal
    import threading

    place_model(tmp_path / "models")
    server = LokalServer(tmp_path / "models", "--shutdown-grace", "8")
    try:
        httpx.post(f"{server.base}/v1/chat/completions", json=dict(LONG, max_tokens=1), timeout=120)
        short: dict = {}
        events: list[str] = []

        def finish_short() -> None:
            r = httpx.post(f"{server.base}/v1/chat/completions", json=dict(LONG, max_tokens=10), timeout=120)
            short["status"] = r.status_code

        def long_stream() -> None:
            with httpx.stream("POST", f"{server.base}/v1/chat/completions", timeout=120,
                              json=dict(LONG, max_tokens=5000, stream=True, ignore_eos=True)) as r:
                events.extend(line for line in r.iter_lines() if line.startswith("data: "))

        threads = [threading.Thread(target=finish_short), threading.Thread(target=long_stream)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        server.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        assert short.get("status") == 200  # finished within the grace period
        assert events[-1] == "data: [DONE]"
        error = json.loads(events[-2][len("data: "):])
        assert error["error"]["code"] == 503 and "shutting down" in error["error"]["message"]
        # A shutdown asked for with SIGTERM and done is a clean exit (docker stop, systemd).
        assert server.proc.wait(30) == 0
        assert "Finished server process" in server.log()
    finally:
        server.stop()
