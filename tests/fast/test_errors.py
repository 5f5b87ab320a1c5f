"""Engine errors as clients see them: an HTTP error before the first chunk, an event after."""

from __future__ import annotations

import pytest

from lokal.engines.fake import crash, fail, reply, sleep
from tests.fakeengine import chat, completion, sse_events

TYPES = {400: "invalid_request_error", 404: "invalid_request_error", 500: "server_error",
         501: "server_error", 503: "server_error"}


def _envelope(r, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["code"] == status and error["message"]
    return error


@pytest.mark.parametrize("status", sorted(TYPES))
@pytest.mark.parametrize("path, body", [("/v1/chat/completions", chat()), ("/v1/completions", completion())])
def test_engine_error_status_and_envelope(fake_server, status: int, path: str, body: dict) -> None:
    server = fake_server([fail(status, f"engine says {status}", "some_kind")])
    with server.client() as client:
        error = _envelope(client.post(path, json=body), status)
        assert error["message"] == f"engine says {status}" and error["type"] == TYPES[status]
        # The same before the first chunk of a stream: an HTTP error, not an event.
        error = _envelope(client.post(path, json=dict(body, stream=True)), status)
        assert error["message"] == f"engine says {status}"


def test_engine_status_out_of_range_is_500(fake_server) -> None:
    server = fake_server([fail(200, "odd")])
    with server.client() as client:
        _envelope(client.post("/v1/chat/completions", json=chat()), 500)


def test_context_overflow_is_400_with_counts(fake_server) -> None:
    server = fake_server([fail(400, "request (2031 tokens) exceeds the available context size (512 tokens)",
                               "exceed_context_size_error", n_prompt_tokens=2031, n_ctx=512)])
    with server.client() as client:
        for stream in (False, True):
            r = client.post("/v1/chat/completions", json=chat("x", stream=stream))
            assert r.status_code == 400
            error = r.json()["error"]
            assert error["code"] == "context_length_exceeded"  # OpenAI's code, not the status
            assert error["n_prompt_tokens"] == 2031 and error["n_ctx"] == 512
            assert "512" in error["message"] and "2031" in error["message"]
            assert error["type"] == "invalid_request_error"


def test_error_mid_stream_is_an_event_then_done(fake_server) -> None:
    server = fake_server([reply("Hel", "lo", finish=None), fail(500, "the engine fell over")])
    with server.client() as client:
        with client.stream("POST", "/v1/chat/completions",
                           json=chat(stream=True, stream_options={"include_usage": True})) as r:
            assert r.status_code == 200
            events = sse_events(r.read().decode())
    assert events[-1] == "[DONE]"
    assert events[-2] == {"error": {"message": "the engine fell over", "type": "server_error",
                                    "param": None, "code": 500}}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in events[:-2])
    assert text == "Hello"
    # The chunks before it were sent as they came.
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"


def test_error_mid_completion_stream(fake_server) -> None:
    server = fake_server([reply("a", finish=None), fail(503, "busy engine")])
    with server.client() as client:
        with client.stream("POST", "/v1/completions", json=completion(stream=True)) as r:
            events = sse_events(r.read().decode())
    assert events[0]["choices"][0]["text"] == "a"
    assert events[-2]["error"]["code"] == 503 and events[-1] == "[DONE]"


def test_error_after_chunks_of_a_whole_answer_is_an_http_error(fake_server) -> None:
    server = fake_server([reply("Hel", "lo", finish=None), fail(500, "the engine fell over")])
    with server.client() as client:
        error = _envelope(client.post("/v1/chat/completions", json=chat()), 500)
    assert error["message"] == "the engine fell over"


def test_slow_error_before_first_chunk_is_still_an_http_error(fake_server) -> None:
    server = fake_server([sleep(0.2), fail(400, "bad grammar")])
    with server.client() as client:
        error = _envelope(client.post("/v1/chat/completions", json=chat(stream=True)), 400)
    assert error["message"] == "bad grammar"


def test_server_keeps_serving_after_engine_errors(fake_server) -> None:
    def script(request):
        return [fail(500, "boom")] if "fail" in request.last_user else [reply("fine")]

    server = fake_server(script, parallel_requests=1, queue_size=0)
    with server.client() as client:
        for _ in range(5):
            assert client.post("/v1/chat/completions", json=chat("fail")).status_code == 500
            assert client.post("/v1/chat/completions", json=chat("fail", stream=True)).status_code == 500
        r = client.post("/v1/chat/completions", json=chat("ok"))
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "fine"
    assert len(server.engines) == 1  # an engine error is the request's, not a reason to reload


def test_unknown_model_is_404_and_never_reaches_an_engine(fake_server) -> None:
    server = fake_server()
    with server.client() as client:
        error = _envelope(client.post("/v1/chat/completions", json=dict(chat(), model="nope")), 404)
    assert error["param"] == "model" and error["type"] == "not_found_error"
    assert server.engines == []


def test_n_beyond_the_slots_is_400(fake_server) -> None:
    server = fake_server(parallel_requests=2)
    with server.client() as client:
        error = _envelope(client.post("/v1/chat/completions", json=chat(n=3)), 400)
    assert error["param"] == "n" and "PARALLEL_REQUESTS" in error["message"]
    assert server.calls == []



def _crash_or_reply(request):
    if "crash" in request.last_user:
        return [crash(RuntimeError("secret /internal/path"))]
    return [reply("fine")]


def test_unexpected_engine_exception_is_500_without_internals(fake_server) -> None:
    server = fake_server(_crash_or_reply)
    for stream in (False, True):
        with server.client() as client:
            error = _envelope(client.post("/v1/chat/completions", json=chat("crash", stream=stream)), 500)
        assert "secret" not in error["message"] and error["type"] == "server_error"
    with server.client() as client:
        assert client.post("/v1/chat/completions", json=chat("ok")).status_code == 200


def test_keep_alive_connection_survives_an_unexpected_error(fake_server) -> None:
    server = fake_server(_crash_or_reply)
    with server.client() as client:
        r = client.post("/v1/chat/completions", json=chat("crash"))
        assert r.status_code == 500
        assert r.headers.get("connection") == "close" or \
            client.post("/v1/chat/completions", json=chat("ok")).status_code == 200
