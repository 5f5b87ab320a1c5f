"""Slots and the wait queue (429 + Retry-After), REQUEST_TIMEOUT (408), the busy watchdog."""

from __future__ import annotations

import threading
import time

import httpx

from lokal.engines.fake import forever, reply, sleep, stall
from tests.fakeengine import chat, completion, sse_events


def _post_in_background(server, body: dict, results: list, path: str = "/v1/chat/completions") -> threading.Thread:
    def run() -> None:
        with server.client() as client:
            results.append(client.post(path, json=body))

    worker = threading.Thread(target=run)
    worker.start()
    return worker


def _in_use(server) -> int:
    """Requests holding the model: generating, or waiting in lokal for a slot."""
    return sum(instance.in_use for instance in server.registry.pool.loaded().values())


def test_full_queue_is_429_with_retry_after(fake_server) -> None:
    gate = threading.Event()
    server = fake_server([stall(gate), reply("done")], parallel_requests=1, queue_size=1)
    results: list[httpx.Response] = []
    workers = [_post_in_background(server, chat(f"{i}"), results) for i in range(2)]
    # One generates, one waits (in lokal, for the slot): slot + queue are full.
    server.wait(lambda: _in_use(server) == 2 and len(server.calls) == 1, what="one generating, one waiting")
    assert server.engine.active == 1
    with server.client() as client:
        for path, body in (("/v1/chat/completions", chat("more")), ("/v1/completions", completion()),
                           ("/v1/chat/completions", chat("more", stream=True))):
            r = client.post(path, json=body)
            assert r.status_code == 429, r.text
            assert r.headers["retry-after"] == "1"
            error = r.json()["error"]
            assert error["type"] == "rate_limit_error" and error["code"] == 429
            assert "QUEUE_SIZE" in error["message"]
    assert len(server.calls) == 1  # refused before the engine
    gate.set()
    for worker in workers:
        worker.join(5)
    assert [r.status_code for r in results] == [200, 200]
    assert server.engine.peak == 1
    with server.client() as client:  # the queue drained
        assert client.post("/v1/chat/completions", json=chat("again")).status_code == 200


def test_requests_share_the_slots(fake_server) -> None:
    gate = threading.Event()
    server = fake_server([stall(gate), reply("done")], parallel_requests=2, queue_size=4)
    results: list[httpx.Response] = []
    workers = [_post_in_background(server, chat(f"{i}"), results) for i in range(5)]
    server.wait(lambda: _in_use(server) == 5 and len(server.calls) == 2, what="two generating, three waiting")
    time.sleep(0.05)
    assert server.engine.active == 2 and len(server.calls) == 2  # two generate, three wait for a slot
    gate.set()
    for worker in workers:
        worker.join(5)
    assert [r.status_code for r in results] == [200] * 5
    assert server.engine.peak == 2


def test_request_timeout_is_408_and_frees_the_slot(fake_server) -> None:
    def script(request):
        return [reply("ok")] if request.last_user == "short" else [forever()]

    server = fake_server(script, parallel_requests=1, queue_size=0, request_timeout=0.3)
    with server.client() as client:
        started = time.monotonic()
        r = client.post("/v1/chat/completions", json=chat("long"))
        assert r.status_code == 408, r.text
        assert time.monotonic() - started < 2
        error = r.json()["error"]
        assert error["type"] == "timeout_error" and error["code"] == 408
        call = server.calls[0]
        server.wait(lambda: call.done.is_set(), what="the engine to stop")
        assert call.stopped
        assert client.post("/v1/chat/completions", json=chat("short")).status_code == 200


def test_request_timeout_mid_stream_is_an_error_event(fake_server) -> None:
    server = fake_server([forever()], request_timeout=0.3)
    with server.client() as client:
        with client.stream("POST", "/v1/completions", json=completion(stream=True)) as r:
            assert r.status_code == 200
            events = sse_events(r.read().decode())
    assert events[0]["choices"][0]["text"] == "x"
    assert events[-2]["error"]["code"] == 408 and events[-2]["error"]["type"] == "timeout_error"
    assert events[-1] == "[DONE]"
    server.wait(lambda: server.calls[0].done.is_set(), what="the engine to stop")
    assert server.calls[0].stopped


def test_timeout_field_overrides_and_counts_before_the_first_chunk(fake_server) -> None:
    server = fake_server([sleep(0.6), reply("late")])
    with server.client() as client:
        r = client.post("/v1/chat/completions", json=chat("x", stream=True, timeout=0.2))
        assert r.status_code == 408, r.text  # nothing was sent yet: an HTTP error
        assert "0.2 s" in r.json()["error"]["message"]
        call = server.calls[0]
        server.wait(lambda: call.done.is_set(), what="the engine's first chunk")
        assert call.stopped and len(call.chunks) == 1  # told to stop at its first token
        assert "timeout" not in call.body
        # Without the field, no timeout applies (REQUEST_TIMEOUT unset).
        r = client.post("/v1/chat/completions", json=chat("x"))
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "late"


def test_busy_watchdog_ends_a_stuck_request_and_reloads_the_model(fake_server) -> None:
    def script(request):
        return [stall(), reply("late")] if request.last_user == "hang" else [reply("fresh")]

    server = fake_server(script, watchdog_busy_timeout=0.3)
    with server.client() as client:
        r = client.post("/v1/chat/completions", json=chat("hang"))
        assert r.status_code == 500, r.text
        error = r.json()["error"]
        assert "WATCHDOG_BUSY_TIMEOUT" in error["message"] and error["type"] == "server_error"
        stuck = server.engines[0]
        assert not stuck.closed  # its engine call has not returned: it cannot be freed yet
        r = client.post("/v1/chat/completions", json=chat("hello"))
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "fresh"
        assert len(server.engines) == 2 and server.calls[-1] in server.engines[1].calls
        stuck.unstick.set()  # the engine comes back: its request was ended, so it stops
        server.wait(lambda: stuck.closed, what="the retired engine to be closed")
        assert stuck.calls[0].stopped


def test_busy_watchdog_mid_stream_is_an_error_event(fake_server) -> None:
    server = fake_server([reply("a", finish=None), stall()], watchdog_busy_timeout=0.3)
    with server.client() as client:
        with client.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as r:
            assert r.status_code == 200
            events = sse_events(r.read().decode())
    assert events[1]["choices"][0]["delta"]["content"] == "a"
    assert events[-2]["error"]["code"] == 500 and "WATCHDOG_BUSY_TIMEOUT" in events[-2]["error"]["message"]
    assert events[-1] == "[DONE]"


def test_busy_watchdog_leaves_a_slow_steady_stream_alone(fake_server) -> None:
    server = fake_server([reply(*"abcdefgh", interval=0.1)], watchdog_busy_timeout=0.3)
    with server.client() as client:
        r = client.post("/v1/chat/completions", json=chat())
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "abcdefgh"
    assert len(server.engines) == 1


def test_waiting_for_a_slot_is_not_a_stuck_engine(fake_server) -> None:
    server = fake_server([reply(*"abcdefgh", interval=0.1)], parallel_requests=1,
                         watchdog_busy_timeout=0.3)
    results: list[httpx.Response] = []
    first = _post_in_background(server, chat("first"), results)
    server.wait(lambda: server.engines and server.engine.active == 1, what="the first call")
    second = _post_in_background(server, chat("second"), results)
    first.join(5)
    second.join(5)
    assert [r.status_code for r in results] == [200, 200], [r.text for r in results]
    assert len(server.engines) == 1


def test_a_request_that_times_out_waiting_for_a_slot_gives_everything_back(fake_server) -> None:
    """Timed out before its engine call began: no slot and no hold on the model may stay."""
    gate = threading.Event()

    def script(request):
        return [stall(gate), reply("done")] if request.last_user == "first" else [reply("ok")]

    server = fake_server(script, parallel_requests=1, queue_size=2, request_timeout=0.5)
    results: list[httpx.Response] = []
    first = _post_in_background(server, chat("first"), results)
    server.wait(lambda: len(server.calls) == 1, what="the first call")
    with server.client() as client:
        r = client.post("/v1/chat/completions", json=chat("second"))
        assert r.status_code == 408, r.text  # its deadline passed while it waited for the slot
    gate.set()
    first.join(5)
    server.wait(lambda: _in_use(server) == 0, what="the model to be free")
    with server.client() as client:
        assert client.post("/v1/chat/completions", json=chat("third")).status_code == 200
    assert [call.last_user for call in server.calls] == ["first", "third"]
