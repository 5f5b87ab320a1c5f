"""Server-sent events: shape, usage, [DONE], and cancellation on disconnect."""

from __future__ import annotations

import json
import time

import httpx
import openai

import pytest

from tests.conftest import MODEL, LokalServer, place_model


def _events(response: httpx.Response) -> list[str]:
    return [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]


def test_stream_chunks_follow_openai_shape(http: httpx.Client) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8,
            "stream": True}
    # Dify sends Accept: application/json on streaming requests: still SSE.
    with http.stream("POST", "/v1/chat/completions", json=body,
                     headers={"Accept": "application/json"}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = _events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == MODEL for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert all(ch["index"] == 0 for c in chunks for ch in c["choices"])
    finishing = [c for c in chunks if c["choices"][0]["finish_reason"]]
    assert finishing == [chunks[-1]]
    assert "usage" not in chunks[-1]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text.strip()


def test_stream_include_usage_adds_a_usage_chunk(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=6, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 6
    assert chunks[-2].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks[:-1])


def test_completion_stream(client: openai.OpenAI) -> None:
    chunks = list(client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6,
                                            stream=True))
    assert all(isinstance(c.choices[0].text, str) for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert sum(1 for c in chunks if c.choices[0].finish_reason) == 1
    assert "".join(c.choices[0].text for c in chunks).strip()


def test_stream_error_before_first_token_is_an_http_error(http: httpx.Client) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x " * 3000}], "stream": True}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["n_prompt_tokens"] > r.json()["error"]["n_ctx"]


def test_disconnect_frees_the_slot(tmp_path) -> None:  # noqa: ANN001
    """With one slot, a generation that went on after its client left would block the next."""
    models = tmp_path / "models"
    place_model(models)
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    long = {"model": name, "messages": [{"role": "user", "content": "Write a very long story."}],
            "max_tokens": 3000, "temperature": 1.0}
    with LokalServer(models, "--parallel-requests", "1", "--context-size", "4096") as server:
        with httpx.Client(base_url=server.base, timeout=60) as http:
            # Streaming: read a few chunks, then hang up.
            with http.stream("POST", "/v1/chat/completions", json=dict(long, stream=True)) as r:
                for n, _line in enumerate(r.iter_lines()):
                    if n > 6:
                        break
            # Non-streaming: give up waiting after a moment.
            with pytest.raises(httpx.ReadTimeout):
                http.post("/v1/chat/completions", json=long, timeout=1.0)
            start = time.monotonic()
            reply = http.post("/v1/chat/completions", json={
                "model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
            waited = time.monotonic() - start
        assert reply.status_code == 200
        # 3000 tokens take ~25 s here; a freed slot answers at once.
        assert waited < 8, f"the next request waited {waited:.1f}s: a dropped generation kept its slot"
