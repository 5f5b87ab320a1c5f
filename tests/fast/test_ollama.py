"""Ollama's /api/chat and /api/generate on the fake engine: errors before and after the first token."""

from __future__ import annotations

import json

from lokal.engines.fake import fail, reply


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line]


def test_error_mid_stream_is_an_error_line(fake_server) -> None:
    server = fake_server([reply("Hel", "lo", finish=None), fail(500, "the engine fell over")])
    with server.client() as client:
        with client.stream("POST", "/api/chat", json={
                "model": "fake", "messages": [{"role": "user", "content": "hi"}]}) as r:
            assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
            lines = _lines(r.read().decode())
    assert lines[-1] == {"error": "the engine fell over"}
    assert "".join(line["message"]["content"] for line in lines[:-1]) == "Hello"
    assert all(line["done"] is False for line in lines[:-1])


def test_error_before_the_first_token_is_an_http_error(fake_server) -> None:
    server = fake_server([fail(400, "request (2031 tokens) exceeds the available context size (512 tokens)",
                               "exceed_context_size_error")])
    with server.client() as client:
        for stream in (True, False):
            r = client.post("/api/generate", json={"model": "fake:latest", "prompt": "hi", "stream": stream})
            assert r.status_code == 400 and set(r.json()) == {"error"}
            assert "context size" in r.json()["error"]


def test_whole_answer_and_final_object(fake_server) -> None:
    server = fake_server([reply("Hel", "lo", finish="stop", prompt_tokens=5)])
    with server.client() as client:
        r = client.post("/api/chat", json={"model": "fake", "stream": False,
                                           "messages": [{"role": "user", "content": "hi"}]})
    answer = r.json()
    assert answer["message"] == {"role": "assistant", "content": "Hello"}
    assert answer["done"] is True and answer["done_reason"] == "stop"
    assert answer["prompt_eval_count"] == 5 and answer["eval_count"] >= 1
    assert answer["total_duration"] >= answer["prompt_eval_duration"] + answer["eval_duration"]
