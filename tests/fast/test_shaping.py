"""Chunks as OpenAI clients read them, and whole answers assembled from the same chunks."""

from __future__ import annotations

import json
import time
from typing import Any

from lokal.engines.fake import Chunk, reply
from tests.fakeengine import MODEL, chat, completion, sse_events


def _stream(server: Any, path: str, body: dict[str, Any]) -> list[Any]:
    with server.client() as client:
        with client.stream("POST", path, json=dict(body, stream=True)) as r:
            assert r.status_code == 200, r.read()
            assert r.headers["content-type"].startswith("text/event-stream")
            return sse_events(r.read().decode())


def test_chat_stream_shape(fake_server) -> None:
    server = fake_server([reply("Hel", "lo", "!")])
    before = int(time.time())
    events = _stream(server, "/v1/chat/completions", chat("hi"))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == MODEL for c in chunks)
    assert len({c["created"] for c in chunks}) == 1 and before - 1 <= chunks[0]["created"] <= time.time() + 1
    # The first chunk carries the role (and "" content, as OpenAI sends it); every choice has its index.
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(set(ch) >= {"index", "delta", "logprobs", "finish_reason"}
               for c in chunks for ch in c["choices"])
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "Hello!"
    finishing = [c for c in chunks if c["choices"][0]["finish_reason"]]
    assert finishing == [chunks[-1]] and chunks[-1]["choices"][0]["finish_reason"] == "stop"
    # Without stream_options.include_usage there is no usage anywhere (the engine's is dropped).
    assert all("usage" not in c for c in chunks)
    assert all("system_fingerprint" not in c and "timings" not in c for c in chunks)


def test_chat_stream_include_usage(fake_server) -> None:
    server = fake_server([reply("a", "b", "c", finish="length", prompt_tokens=7)])
    events = _stream(server, "/v1/chat/completions",
                     chat("hi", stream_options={"include_usage": True}))
    chunks = events[:-1]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10,
                                   "prompt_tokens_details": {"cached_tokens": 0}}
    assert all("usage" not in c for c in chunks[:-1])
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["id"] == chunks[0]["id"]


def test_chat_stream_n_choices(fake_server) -> None:
    server = fake_server([reply("x", "y", prompt_tokens=5)], parallel_requests=4)
    events = _stream(server, "/v1/chat/completions",
                     chat("hi", n=3, stream_options={"include_usage": True}))
    chunks = events[:-1]
    by_index: dict[int, list[dict[str, Any]]] = {}
    for c in chunks[:-1]:
        for choice in c["choices"]:
            by_index.setdefault(choice["index"], []).append(choice)
    assert sorted(by_index) == [0, 1, 2]
    for choices in by_index.values():
        assert choices[0]["delta"]["role"] == "assistant"
        assert sum(1 for ch in choices if ch["delta"].get("role")) == 1
        assert [ch["finish_reason"] for ch in choices if ch["finish_reason"]] == ["stop"]
        assert "".join(ch["delta"].get("content") or "" for ch in choices) == "xy"
    # The engine reports the prompt once per choice; OpenAI counts it once.
    usage = chunks[-1]["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (5, 6, 11)
    assert server.last.body["n"] == 3


def test_completion_stream_shape(fake_server) -> None:
    server = fake_server([reply(" there", " was", finish="length", prompt_tokens=4)])
    events = _stream(server, "/v1/completions",
                     completion(stream_options={"include_usage": True}))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("cmpl-")
    assert all(c["object"] == "text_completion" and c["model"] == MODEL for c in chunks)
    text_chunks, usage_chunk = chunks[:-1], chunks[-1]
    assert all(set(ch) == {"index", "text", "logprobs", "finish_reason"}
               for c in text_chunks for ch in c["choices"])
    assert "".join(c["choices"][0]["text"] for c in text_chunks) == " there was"
    assert [c["choices"][0]["finish_reason"] for c in text_chunks] == [None, None, "length"]
    # The engine puts usage on its finish chunk; lokal sends it alone, last.
    assert all("usage" not in c for c in text_chunks)
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["total_tokens"] == 6


def test_completion_prompt_list_and_n(fake_server) -> None:
    server = fake_server([reply("!", prompt_tokens=3)], parallel_requests=4)
    with server.client() as client:
        r = client.post("/v1/completions", json=completion(["one two", "three"], n=2))
    assert r.status_code == 200, r.text
    data = r.json()
    assert [c["index"] for c in data["choices"]] == [0, 1, 2, 3]
    assert all(c["text"] == "!" and c["finish_reason"] == "stop" for c in data["choices"])
    # Four engine tasks report 3 prompt tokens each; two prompts, counted once per prompt.
    assert data["usage"] == {"prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10,
                             "prompt_tokens_details": {"cached_tokens": 0}}


def test_chat_answer_assembled_from_chunks(fake_server) -> None:
    server = fake_server([reply("Hel", "lo", finish="length", prompt_tokens=9)])
    with server.client() as client:
        r = client.post("/v1/chat/completions", json=chat("hi"))
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["id"].startswith("chatcmpl-") and data["object"] == "chat.completion"
    assert data["model"] == MODEL and isinstance(data["created"], int)
    assert data["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "Hello"},
                                "logprobs": None, "finish_reason": "length"}]
    assert data["usage"]["prompt_tokens"] == 9 and data["usage"]["completion_tokens"] == 2
    assert data["usage"]["total_tokens"] == 11


def test_chat_answer_n_choices_in_index_order(fake_server) -> None:
    def script(request):  # the engine finishes choice 1 before choice 0
        return [reply("second", index=1), reply("first", index=0)]

    server = fake_server(script, parallel_requests=2)
    with server.client() as client:
        data = client.post("/v1/chat/completions", json=chat("hi", n=2)).json()
    assert [(c["index"], c["message"]["content"]) for c in data["choices"]] == [(0, "first"), (1, "second")]
    assert data["usage"]["completion_tokens"] == 2


def test_empty_answer_has_empty_content_not_null(fake_server) -> None:
    server = fake_server([reply()])
    with server.client() as client:
        data = client.post("/v1/chat/completions", json=chat("hi")).json()
        text = client.post("/v1/completions", json=completion()).json()
    assert data["choices"][0]["message"] == {"role": "assistant", "content": ""}
    assert data["choices"][0]["finish_reason"] == "stop"
    assert text["choices"][0]["text"] == ""


def test_native_tool_call_and_reasoning_deltas_are_merged(fake_server) -> None:
    base = {"created": 1, "id": "chatcmpl-engine", "model": "x", "object": "chat.completion.chunk"}

    def delta(d: dict[str, Any], finish: str | None = None) -> Chunk:
        return Chunk(dict(base, choices=[{"index": 0, "delta": d, "finish_reason": finish}]))

    steps = [
        delta({"role": "assistant", "content": None}),
        delta({"reasoning_content": "Think"}), delta({"reasoning_content": "ing."}),
        delta({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                               "function": {"name": "get_", "arguments": "{\"ci"}}]}),
        delta({"tool_calls": [{"index": 0, "function": {"name": "weather", "arguments": "ty\": 1}"}}]}),
        delta({}, "tool_calls"),
    ]
    server = fake_server(steps)
    with server.client() as client:
        data = client.post("/v1/chat/completions", json=chat("hi")).json()
    message = data["choices"][0]["message"]
    assert message["reasoning_content"] == "Thinking."
    assert message["tool_calls"] == [{"id": "call_1", "type": "function",
                                      "function": {"name": "get_weather", "arguments": "{\"city\": 1}"}}]
    assert message["content"] is None
    assert data["choices"][0]["finish_reason"] == "tool_calls"


def test_chunks_are_not_held_back(fake_server) -> None:
    """Each token reaches the client as it is made, not when the answer ends."""
    server = fake_server([reply("a", "b", "c", "d", interval=0.15)])
    arrivals: list[float] = []
    with server.client() as client:
        with client.stream("POST", "/v1/chat/completions", json=chat("hi", stream=True)) as r:
            for line in r.iter_lines():
                if line.startswith("data: ") and '"content":"' in line and '"content":""' not in line:
                    arrivals.append(time.monotonic())
    assert len(arrivals) == 4
    assert arrivals[-1] - arrivals[0] > 0.3, arrivals


def test_chat_stream_json_roundtrip_of_unicode(fake_server) -> None:
    server = fake_server([reply("héllo ", "世界 ", "🙂")])
    events = _stream(server, "/v1/chat/completions", chat("hi"))
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in events[:-1]) == "héllo 世界 🙂"
    with server.client() as client:
        raw = client.post("/v1/chat/completions", json=chat("hi")).content
    assert json.loads(raw)["choices"][0]["message"]["content"] == "héllo 世界 🙂"
