"""Pieces of the Ollama family without a server: settings, keep_alive, options, names, shaping."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from lokal.api.ollama.models import human_number, wire_name
from lokal.api.ollama.protocol import ChatRequest, parse_keep_alive
from lokal.api.ollama.render import OllamaRenderer, Timer
from lokal.errors import BadRequest
from lokal.settings import Settings
from lokal.tasks import Delta, ToolCallDelta, Usage


def test_ollama_address_setting() -> None:
    assert Settings().ollama_host_port is None
    assert Settings(ollama_address="127.0.0.1:11434").ollama_host_port == ("127.0.0.1", 11434)
    assert Settings(ollama_address=":11434").ollama_host_port == ("0.0.0.0", 11434)
    for bad in ("11434", "host:port", "127.0.0.1:0", "127.0.0.1:70000"):
        with pytest.raises(ValidationError, match="ollama address"):
            Settings(ollama_address=bad)


@pytest.mark.parametrize("value,seconds", [
    (None, 300.0), (0, 0.0), ("0", 0.0), ("5m", 300.0), ("1h30m", 5400.0), ("500ms", 0.5),
    (-1, None), ("-1m", None), ("-1", None), (12.5, 12.5), ("90", 90.0)])
def test_keep_alive(value: object, seconds: float | None) -> None:
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["5 minutes", "m", "nan", True, [1]])
def test_bad_keep_alive(value: object) -> None:
    with pytest.raises(BadRequest):
        parse_keep_alive(value)


def test_options_map_onto_sampling() -> None:
    body = ChatRequest.model_validate({"model": "m", "messages": [{"role": "USER", "content": "x"}], "options": {
        "temperature": 1, "top_p": 0.5, "top_k": 20.0, "min_p": 0.1, "num_predict": -1, "seed": -1,
        "stop": ["a"], "repeat_penalty": 1.1, "presence_penalty": 0.2, "frequency_penalty": 0.3,
        "num_ctx": 4096, "typical_p": 0.7, "some_future_option": {"x": 1}}})
    sampling = body.to_task("m").options.sampling
    assert (sampling.temperature, sampling.top_p, sampling.top_k, sampling.min_p) == (1.0, 0.5, 20, 0.1)
    assert sampling.max_tokens is None and sampling.seed is None and sampling.stop == ["a"]
    assert (sampling.repeat_penalty, sampling.presence_penalty, sampling.frequency_penalty) == (1.1, 0.2, 0.3)
    assert body.num_ctx == 4096 and body.stream is True
    assert body.to_task("m").messages[0].role == "user"


@pytest.mark.parametrize("options,word", [
    ({"temperature": "hot"}, "float32"), ({"num_predict": "10"}, "integer"), ({"stop": "x"}, "array"),
    ({"stop": [1]}, "strings"), ({"use_mmap": 1}, "boolean"), ({"top_p": 2}, "between"),
    ({"temperature": -1}, "at least")])
def test_bad_options(options: dict[str, object], word: str) -> None:
    with pytest.raises(BadRequest, match=word):
        ChatRequest.model_validate({"model": "m", "options": options})


def test_names() -> None:
    assert wire_name("gpt-3.5-turbo") == "gpt-3.5-turbo:latest"
    assert wire_name("llama3:8b") == "llama3:8b"
    assert wire_name("ns/model") == "ns/model:latest"
    assert (human_number(8_030_261_248), human_number(135_000_000), human_number(22_713_216)) == \
        ("8.0B", "135M", "22.71M")


def test_tool_calls_come_whole_with_object_arguments() -> None:
    renderer = OllamaRenderer("chat", "m", Timer())
    first = renderer.feed([Delta(tool_calls=[ToolCallDelta(0, "call_1", "f", '{"a": ')])])
    assert first == b""  # not complete yet
    second = renderer.feed([Delta(tool_calls=[ToolCallDelta(0, arguments="1}")]),
                            Delta(tool_calls=[ToolCallDelta(1, "call_2", "g", "{}")], finish_reason="tool_calls")])
    assert b'"arguments":{"a":1}' in second and b'"name":"g"' not in second  # g closes at the end
    final = json.loads(renderer.end(Usage(3, 4)))
    assert final["done_reason"] == "stop" and final["message"]["tool_calls"][0]["function"]["name"] == "g"
    # A call cut at the token limit: its arguments completed by the one rule (api/assembly.py).
    cut = OllamaRenderer("generate", "m", Timer())
    whole = json.loads(cut.whole([Delta(tool_calls=[ToolCallDelta(0, "c", "f", '{"a": "x')],
                                        finish_reason="length")], Usage()).body)
    assert whole["tool_calls"][0]["function"]["arguments"] == {"a": "x"} and whole["done_reason"] == "length"


def test_ollama_address_in_use_fails_start(tmp_path) -> None:  # noqa: ANN001
    import socket
    import subprocess
    import sys

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "lokal", "serve", "--models-path", str(tmp_path),
                               "--address", "127.0.0.1:0", "--ollama-address", f"127.0.0.1:{port}"],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "OLLAMA_ADDRESS" in done.stderr
