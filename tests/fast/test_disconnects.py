"""Clients that go away: the engine is told to stop within one token and the slot is freed."""

from __future__ import annotations

import re
import threading

import httpx
import pytest

from lokal.engines.fake import forever, reply, stall
from tests.fakeengine import chat, completion


def _in_flight(server) -> int:
    text = httpx.get(f"{server.base}/metrics", timeout=5).text
    return int(re.search(r"^lokal_requests_in_flight (\d+)(?:\.0)?$", text, re.M).group(1))


def _then_free(server) -> None:
    """With one slot and no queue, a leaked request would make the next one a 429."""
    server.wait(lambda: server.engine.active == 0, what="the engine to be idle")
    with server.client() as client:
        r = client.post("/v1/chat/completions", json=chat("short"))
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "ok"
    server.wait(lambda: _in_flight(server) == 1, what="no request in flight but /metrics")


def _script(request):
    return [reply("ok")] if request.last_user == "short" else [forever()]


@pytest.mark.parametrize("path, body", [("/v1/chat/completions", chat("long")),
                                        ("/v1/completions", completion("long"))])
def test_stream_dropped_after_a_few_chunks_stops_the_engine(fake_server, path: str, body: dict) -> None:
    server = fake_server(_script, parallel_requests=1, queue_size=0)
    with server.client() as client:
        with client.stream("POST", path, json=dict(body, stream=True)) as r:
            seen = 0
            for line in r.iter_lines():
                if line.startswith("data: "):
                    seen += 1
                    if seen == 3:
                        break
    call = server.calls[0]
    server.wait(lambda: call.done.is_set(), what="the engine call to return")
    assert call.stopped and call.error is None
    _then_free(server)


@pytest.mark.parametrize("path, body", [("/v1/chat/completions", chat("long")),
                                        ("/v1/completions", completion("long"))])
def test_whole_answer_abandoned_stops_the_engine(fake_server, path: str, body: dict) -> None:
    server = fake_server(_script, parallel_requests=1, queue_size=0)
    with server.client() as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post(path, json=body, timeout=0.3)
    call = server.calls[0]
    server.wait(lambda: call.done.is_set(), what="the engine call to return")
    assert call.stopped and len(call.chunks) > 10  # it was generating, then stopped
    _then_free(server)


def test_stop_within_one_token(fake_server) -> None:
    """A request whose client left while it waited for a slot never reaches the engine."""
    gate = threading.Event()

    def script(request):
        if request.last_user == "first":
            return [stall(gate), reply("done")]
        return [reply("a", "b", "c", "d", "e")]

    server = fake_server(script, parallel_requests=1, queue_size=1)
    results: dict[str, int] = {}

    def first() -> None:
        with server.client() as client:
            results["first"] = client.post("/v1/chat/completions", json=chat("first")).status_code

    worker = threading.Thread(target=first)
    worker.start()
    server.wait(lambda: len(server.calls) == 1 and server.engine.active == 1, what="the first call")
    with server.client() as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post("/v1/chat/completions", json=chat("second"), timeout=0.3)
    assert len(server.calls) == 1  # the second waits in lokal for the slot
    gate.set()
    worker.join(5)
    assert results["first"] == 200
    with server.client() as client:  # the slot is free again, and the second never ran
        assert client.post("/v1/chat/completions", json=chat("third")).status_code == 200
    assert [call.last_user for call in server.calls] == ["first", "third"]
