"""The fake engine keeps xllamacpp's contract (shapes recorded from xllamacpp 2026.10.11549)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from lokal.engines.base import LoadOptions
from lokal.engines.fake import FakeEngine, crash, fail, forever, reply, stall
from lokal.errors import EngineError


def _engine(script, parallel: int = 1, purpose: str = "generate") -> FakeEngine:
    path = Path("/models/whisper" if purpose == "transcribe" else "/models/fake.gguf")
    options = LoadOptions(model_path=path, context_size=512, threads=1, parallel=parallel,
                          embeddings=purpose in ("embed", "rerank"), rerank=purpose == "rerank")
    return FakeEngine(options, script)


def _collect(engine: FakeEngine, mode: str, body: dict, stop_after: int | None = None) -> list[dict]:
    chunks: list[dict] = []

    def sink(chunk: dict) -> bool:
        chunks.append(chunk)
        return stop_after is not None and len(chunks) >= stop_after

    (engine.chat if mode == "chat" else engine.complete)(body, sink)
    return chunks


def test_chat_chunks_in_the_engine_shape() -> None:
    engine = _engine([reply("Hello", "!", finish="length", prompt_tokens=31)])
    chunks = _collect(engine, "chat", {"messages": [{"role": "user", "content": "hi"}]})
    assert [c["choices"] for c in chunks] == [
        [{"finish_reason": None, "index": 0, "delta": {"role": "assistant", "content": None}}],
        [{"finish_reason": None, "index": 0, "delta": {"content": "Hello"}}],
        [{"finish_reason": None, "index": 0, "delta": {"content": "!"}}],
        [{"finish_reason": "length", "index": 0, "delta": {}}],
        [],
    ]
    assert chunks[-1]["usage"] == {"completion_tokens": 2, "prompt_tokens": 31, "total_tokens": 33,
                                   "prompt_tokens_details": {"cached_tokens": 0}}
    assert all("usage" not in c for c in chunks[:-1])
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    # The engine was asked to stream with usage, as LlamaCppEngine asks it.
    assert engine.calls[0].body["stream"] is True
    assert engine.calls[0].body["stream_options"] == {"include_usage": True}


def test_chat_n_choices_each_end_with_their_usage() -> None:
    chunks = _collect(_engine([reply("a")], parallel=2), "chat",
                      {"messages": [{"role": "user", "content": "one two"}], "n": 2})
    usage = [c for c in chunks if c["choices"] == []]
    assert len(usage) == 2 and all(u["usage"]["prompt_tokens"] == 2 for u in usage)
    assert {ch["index"] for c in chunks for ch in c["choices"]} == {0, 1}


def test_completion_chunks_carry_usage_on_the_finish_chunk() -> None:
    chunks = _collect(_engine([reply(" a", " b")]), "completion", {"prompt": "Once upon"})
    assert [c["choices"] for c in chunks] == [
        [{"text": " a", "index": 0, "logprobs": None, "finish_reason": None}],
        [{"text": " b", "index": 0, "logprobs": None, "finish_reason": None}],
        [{"text": "", "index": 0, "logprobs": None, "finish_reason": "stop"}],
    ]
    assert chunks[-1]["usage"]["prompt_tokens"] == 2 and chunks[-1]["object"] == "text_completion"


def test_sink_true_stops_at_once_without_error() -> None:
    engine = _engine([forever()])
    chunks = _collect(engine, "chat", {"messages": [{"role": "user", "content": "hi"}]}, stop_after=3)
    assert len(chunks) == 3
    call = engine.calls[0]
    assert call.stopped and call.error is None and call.done.is_set() and call.chunks == chunks
    assert engine.active == 0


def test_failure_is_an_engine_error_and_a_crash_is_not() -> None:
    engine = _engine(lambda request: [fail(400, "bad", "exceed_context_size_error", n_ctx=5)]
                       if "fail" in request.text else [reply("ok", finish=None), crash(KeyError("x"))])
    with pytest.raises(EngineError) as caught:
        _collect(engine, "completion", {"prompt": "fail"})
    assert (caught.value.status, caught.value.kind, caught.value.details) == (400, "exceed_context_size_error",
                                                                                {"n_ctx": 5})
    assert engine.calls[0].error is caught.value
    with pytest.raises(KeyError):
        _collect(engine, "completion", {"prompt": "other"})


def test_slots_bound_concurrent_generation() -> None:
    gate = threading.Event()
    engine = _engine([stall(gate), reply("done")], parallel=2)
    workers = [threading.Thread(target=_collect, args=(engine, "chat", {"messages": []})) for _ in range(4)]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + 5
    while len(engine.calls) < 4 and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.05)
    assert engine.active == 2
    gate.set()
    for worker in workers:
        worker.join(5)
    assert engine.peak == 2 and engine.active == 0
    assert all(call.output == "done" for call in engine.calls)


def test_close_releases_stalls() -> None:
    engine = _engine([stall(), reply("late")])
    worker = threading.Thread(target=_collect, args=(engine, "chat", {"messages": []}))
    worker.start()
    time.sleep(0.05)
    assert worker.is_alive()
    engine.close()
    worker.join(5)
    assert not worker.is_alive() and engine.closed


def test_other_purposes() -> None:
    embedder = _engine("", purpose="embed")
    result = embedder.embed(["a b", "c"], truncate=True)
    assert len(result.vectors) == 2 and result.prompt_tokens == 3
    assert all(abs(sum(v * v for v in vec) - 1) < 1e-9 for vec in result.vectors)
    assert embedder.purpose == "embed" and embedder.dimensions == 8
    with pytest.raises(EngineError):
        _engine("").embed(["a"], truncate=True)
    assert _engine("", purpose="rerank").rerank("red car", ["a red car", "blue"]).scores == [1.0, 0.0]
