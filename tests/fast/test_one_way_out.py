"""The one way out (api/respond.py, api/assembly.py): every API family behaves the same
where behaviour is not a matter of wire format — an engine error mid-stream, a stop
sequence (matched by the generation, with exact usage and no second lease), tool-call
arguments that are not JSON, headers and keep-alives before a slow prompt ends — and
every family's generating routes answer through `respond`."""

from __future__ import annotations

import ast
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from lokal.engines.fake import fail, forever, reply, stall
from tests.fakeengine import MODEL
from tests.fast.test_native_tools import TOOL_TEMPLATE, TOOLS, native_calls

SRC = Path(__file__).resolve().parents[2] / "src" / "lokal"


# Each family: how to ask (text prompt, stream, stop sequences, tools) and how to read
# its answer back into (text, error message or None, extra facts).

def _openai_body(stream: bool, stop: list[str] | None = None, tools: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "say it please"}],
                            "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    if stop:
        body["stop"] = stop
    if tools:
        body["tools"] = TOOLS
    return body


def _anthropic_body(stream: bool, stop: list[str] | None = None, tools: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 50, "stream": stream,
                            "messages": [{"role": "user", "content": "say it please"}]}
    if stop:
        body["stop_sequences"] = stop
    if tools:
        body["tools"] = [{"name": t["function"]["name"], "description": t["function"]["description"],
                          "input_schema": t["function"]["parameters"]} for t in TOOLS]
    return body


def _responses_body(stream: bool, stop: list[str] | None = None, tools: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "input": "say it please", "stream": stream}
    if tools:
        body["tools"] = [{"type": "function", **t["function"]} for t in TOOLS]
    return body


def _ollama_body(stream: bool, stop: list[str] | None = None, tools: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "say it please"}],
                            "stream": stream}
    if stop:
        body["options"] = {"stop": stop}
    if tools:
        body["tools"] = TOOLS
    return body


def _sse(text: str) -> list[tuple[str | None, Any]]:
    out: list[tuple[str | None, Any]] = []
    event = None
    for line in text.splitlines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
            out.append((event, data if data == "[DONE]" else json.loads(data)))
            event = None
    return out


def _openai_read(r: httpx.Response, stream: bool) -> dict[str, Any]:
    if not stream:
        data = r.json()
        message = data["choices"][0]["message"]
        return {"text": message["content"] or "", "usage": data["usage"], "calls": [
            (c["function"]["name"], c["function"]["arguments"]) for c in message.get("tool_calls") or []]}
    out: dict[str, Any] = {"text": "", "calls": [], "error": None, "usage": None}
    calls: dict[int, list[str]] = {}
    events = _sse(r.text)
    assert events[-1][1] == "[DONE]"
    for _, data in events[:-1]:
        if "error" in data:
            out["error"] = data["error"]["message"]
            continue
        if data.get("usage"):
            out["usage"] = data["usage"]
        for choice in data["choices"]:
            out["text"] += choice["delta"].get("content") or ""
            for call in choice["delta"].get("tool_calls") or []:
                slot = calls.setdefault(call["index"], ["", ""])
                slot[0] += call["function"].get("name") or ""
                slot[1] += call["function"].get("arguments") or ""
    out["calls"] = [tuple(calls[i]) for i in sorted(calls)]
    return out


def _anthropic_read(r: httpx.Response, stream: bool) -> dict[str, Any]:
    if not stream:
        data = r.json()
        return {"text": "".join(b["text"] for b in data["content"] if b["type"] == "text"),
                "stop_sequence": data["stop_sequence"], "stop_reason": data["stop_reason"],
                "usage": data["usage"], "calls": [(b["name"], b["input"]) for b in data["content"]
                                                  if b["type"] == "tool_use"]}
    out: dict[str, Any] = {"text": "", "error": None, "calls": []}
    partial: dict[int, list[Any]] = {}
    for event, data in _sse(r.text):
        assert event == data["type"]
        if event == "error":
            out["error"] = data["error"]["message"]
        elif event == "content_block_start" and data["content_block"]["type"] == "tool_use":
            partial[data["index"]] = [data["content_block"]["name"], ""]
        elif event == "content_block_delta":
            delta = data["delta"]
            if delta["type"] == "text_delta":
                out["text"] += delta["text"]
            elif delta["type"] == "input_json_delta":
                partial[data["index"]][1] += delta["partial_json"]
        elif event == "message_delta":
            out.update(stop_sequence=data["delta"]["stop_sequence"], stop_reason=data["delta"]["stop_reason"],
                       usage=data["usage"])
    out["streamed_calls"] = [tuple(partial[i]) for i in sorted(partial)]
    return out


def _responses_read(r: httpx.Response, stream: bool) -> dict[str, Any]:
    if not stream:
        data = r.json()
    else:
        data = None
        error = None
        for event, payload in _sse(r.text):
            if event == "error":
                error = payload["message"]
            if event in ("response.completed", "response.incomplete", "response.failed"):
                data = payload["response"]
        assert data is not None
        if error is not None:
            return {"error": error, "text": _responses_text(data), "calls": []}
    return {"text": _responses_text(data), "usage": data["usage"], "error": None,
            "calls": [(i["name"], i["arguments"]) for i in data["output"] if i["type"] == "function_call"]}


def _responses_text(data: dict[str, Any]) -> str:
    return "".join(part["text"] for item in data["output"] if item["type"] == "message"
                   for part in item["content"])


def _ollama_read(r: httpx.Response, stream: bool) -> dict[str, Any]:
    lines = [json.loads(line) for line in r.text.splitlines() if line.strip()] if stream else [r.json()]
    out: dict[str, Any] = {"text": "", "error": None, "calls": []}
    for line in lines:
        if "error" in line:
            out["error"] = line["error"]
            continue
        out["text"] += line["message"]["content"]
        out["calls"] += [(c["function"]["name"], c["function"]["arguments"])
                         for c in line["message"].get("tool_calls") or []]
        if line["done"]:
            out["usage"] = {"prompt_tokens": line["prompt_eval_count"], "completion_tokens": line["eval_count"]}
    return out


FAMILIES: dict[str, tuple[str, Callable[..., dict[str, Any]], Callable[..., dict[str, Any]]]] = {
    "openai": ("/v1/chat/completions", _openai_body, _openai_read),
    "anthropic": ("/v1/messages", _anthropic_body, _anthropic_read),
    "responses": ("/v1/responses", _responses_body, _responses_read),
    "ollama": ("/api/chat", _ollama_body, _ollama_read),
}


def _usage(family: str, out: dict[str, Any]) -> tuple[int, int]:
    usage = out["usage"]
    if family == "anthropic":
        return usage["input_tokens"] + usage["cache_read_input_tokens"], usage["output_tokens"]
    if family == "responses":
        return usage["input_tokens"], usage["output_tokens"]
    return usage["prompt_tokens"], usage["completion_tokens"]


@pytest.mark.parametrize("family", FAMILIES)
def test_engine_error_mid_stream_is_reported_in_stream(fake_server, family: str) -> None:
    path, body, read = FAMILIES[family]
    server = fake_server([reply("Hel", "lo", finish=None), fail(500, "the engine fell over")])
    with server.client() as client:
        r = client.post(path, json=body(True))
    assert r.status_code == 200
    out = read(r, True)
    assert out["text"] == "Hello" and out["error"] == "the engine fell over"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("family", ["openai", "anthropic", "ollama"])
def test_stop_sequence_cuts_the_answer_with_exact_usage(fake_server, family: str, stream: bool) -> None:
    """The generation matches the request's stop sequence (split across tokens), stops the
    engine and counts the usage itself: the prompt as the engine reported it, the tokens
    made up to the match. The same prompt without a stop gives the engine's own count."""
    path, body, read = FAMILIES[family]
    tokens = ("Hello", " wo", "rld E", "ND")
    # The first request's engine goes on past the match until it is told to stop.
    scripts = iter([[reply(*tokens, finish=None), forever(" more")], [reply(*tokens, ".")]])
    server = fake_server(lambda request: next(scripts))
    with server.client() as client:
        cut = read(client.post(path, json=body(stream, stop=["END"])), stream)
        assert server.last.done.wait(10) and server.last.stopped  # told to stop at the match
        whole = read(client.post(path, json=body(stream)), stream)
    assert cut["text"] == "Hello world " and whole["text"] == "Hello world END."
    prompt, completion = _usage(family, cut)
    assert prompt == _usage(family, whole)[0] > 0
    assert completion == 4  # Hello, wo, rld E, ND: the match ended in the fourth token
    if family == "anthropic":
        assert (cut["stop_reason"], cut["stop_sequence"]) == ("stop_sequence", "END")
        assert (whole["stop_reason"], whole["stop_sequence"]) == ("end_turn", None)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_tool_arguments_that_are_not_json_follow_one_rule(fake_server, family: str, stream: bool) -> None:
    """Text families carry the model's text unchanged; object families carry it under
    `_raw`; a call cut at the token limit is completed where an object is needed."""
    path, body, read = FAMILIES[family]
    calls = [("get_weather", "Paris, please"), ("get_time", '{"city": "Par')]
    server = fake_server(native_calls(calls, finish="length"), chat_template=TOOL_TEMPLATE)
    with server.client() as client:
        r = client.post(path, json=body(stream, tools=True))
    assert r.status_code == 200, r.text
    out = read(r, stream)
    if family in ("openai", "responses"):
        assert out["calls"] == calls
    elif family == "anthropic" and stream:
        assert out["streamed_calls"] == calls  # input_json_delta: the model's text as it came
    else:
        assert out["calls"] == [("get_weather", {"_raw": "Paris, please"}), ("get_time", {"city": "Par"})]


@pytest.mark.parametrize("family", FAMILIES)
def test_headers_and_keepalives_before_a_slow_prompt_ends(fake_server, family: str) -> None:
    """A stream's headers and its family's opening leave while the engine is still on the
    prompt (it is held silent here), then keep-alives at STREAM_KEEPALIVE, then the answer."""
    path, body, read = FAMILIES[family]
    keepalive = {"openai": b": keep-alive", "anthropic": b"event: ping", "responses": b"event: response.in_progress",
                 "ollama": b'"done":false'}[family]
    gate = threading.Event()
    server = fake_server([stall(gate), reply("Hi", "!")], stream_keepalive=0.2)
    with server.client() as client:
        with client.stream("POST", path, json=body(True)) as r:
            assert r.status_code == 200 and not gate.is_set()
            received = b""
            chunks = r.iter_raw()
            while received.count(keepalive) < 3:  # the opening (if any) and keep-alives
                received += next(chunks)
            assert not gate.is_set()  # all of it arrived before the engine said a word
            gate.set()
            received += b"".join(chunks)
    assert read(httpx.Response(200, content=received), True)["text"] == "Hi!"


def test_every_generating_route_answers_through_respond() -> None:
    """No family writes its own streaming loop: the routes that generate call `respond`."""
    for family in ("openai", "anthropic", "responses", "ollama"):
        tree = ast.parse((SRC / "api" / family / "routes.py").read_text())
        calls = {node.func.id for node in ast.walk(tree)
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
        assert "respond" in calls, family
        assert "StreamingResponse" not in calls, family
