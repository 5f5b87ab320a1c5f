"""Agent clients' real first requests (recorded bodies, tests/fixtures/agents), served on the
fake engine: Claude Code's mid-conversation system message, Codex's namespace and hosted
tools, and each API family's words for a prompt over the context."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from lokal.engines.fake import fail, sleep, words
from tests.fakeengine import sse_events

AGENTS = Path(__file__).resolve().parents[1] / "fixtures" / "agents"


def recorded(client: str, n: int = 1) -> dict[str, Any]:
    return json.loads((AGENTS / client / f"{n:03d}.json").read_text())


def body_for(record: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**record["body"], "model": "fake", **changes}


def events(text: str) -> list[dict[str, Any]]:
    return [e for e in sse_events(text) if isinstance(e, dict)]


# Claude Code -------------------------------------------------------------------------


@pytest.mark.parametrize("turn", [1, 2, 3, 4])
def test_claude_code_turns_answer_200(fake_server, turn: int) -> None:
    record = recorded("claude-code", turn)
    server = fake_server("Here is what I found.")
    with server.client() as client:
        r = client.post(record["path"], params={"beta": "true"}, json=body_for(record),
                        headers={"anthropic-beta": record["headers"]["anthropic-beta"],
                                 "anthropic-version": "2023-06-01"})
    assert r.status_code == 200, r.text
    kinds = [e["type"] for e in events(r.text)]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    # The system message inside `messages` is folded into the one system prompt, first.
    messages = server.last.body["messages"]
    assert [m["role"] for m in messages].count("system") == 1 and messages[0]["role"] == "system"
    assert "Available agent types for the Agent tool" in messages[0]["content"]
    assert "You are a Claude agent" in messages[0]["content"]
    assert not messages[0]["content"].startswith("x-anthropic-billing-header")


def test_claude_code_system_message_folded_in_order_and_counted(fake_server) -> None:
    server = fake_server("ok")
    body = {"model": "fake", "max_tokens": 10, "system": "You help.",
            "messages": [{"role": "user", "content": "Hi"},
                         {"role": "system", "content": [{"type": "text", "text": "Agents: a, b."}]},
                         {"role": "assistant", "content": "Hello"},
                         {"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "Bye"}]}
    with server.client() as client:
        r = client.post("/v1/messages", json=body)
        assert r.status_code == 200, r.text
        assert [(m["role"], m["content"]) for m in server.last.body["messages"]] == [
            ("system", "You help.\n\nAgents: a, b.\n\nBe brief."), ("user", "Hi"), ("assistant", "Hello"),
            ("user", "Bye")]
        counted = client.post("/v1/messages/count_tokens", json=body)
        assert counted.status_code == 200, counted.text
        assert counted.json()["input_tokens"] > 0
        bad = dict(body, messages=[{"role": "system", "content": [{"type": "image", "source": {
            "type": "base64", "media_type": "image/png", "data": "iVBO"}}]}, {"role": "user", "content": "x"}])
        r = client.post("/v1/messages", json=bad)
        assert r.status_code == 400 and "messages.0.content.0" in r.json()["error"]["message"]


# Codex ------------------------------------------------------------------------------


@pytest.mark.parametrize("turn", [1, 2, 3, 4])
def test_codex_turns_answer_200_without_hosted_tools(fake_server, turn: int, caplog) -> None:
    record = recorded("codex", turn)
    server = fake_server("Here is what I found.")
    with caplog.at_level(logging.INFO, logger="lokal.api.openai.protocol"), server.client() as client:
        r = client.post("/v1/responses", json=body_for(record))
    assert r.status_code == 200, r.text
    assert events(r.text)[-1]["type"] == "response.completed"
    # web_search is left out with one log line; the namespace's functions are flattened.
    assert [rec.message for rec in caplog.records if "web_search" in rec.message] == [
        "responses: left out tools this server cannot run (hosted by OpenAI): web_search"]
    prompt = json.dumps(server.last.body)
    assert "multi_agent_v1__spawn_agent" in prompt and "exec_command" in prompt
    assert "web_search" not in [t.get("function", {}).get("name") for t in server.last.body.get("tools", [])]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("name, expected", [
    ("multi_agent_v1__spawn_agent", {"namespace": "multi_agent_v1", "name": "spawn_agent"}),
    ("exec_command", {"name": "exec_command"}),
])
def test_codex_calls_come_back_under_the_names_it_sent(fake_server, stream: bool, name: str,
                                                       expected: dict[str, str]) -> None:
    call = json.dumps({"function": name, "arguments": {"message": "look around"}})
    server = fake_server([words(call)])
    with server.client() as client:
        r = client.post("/v1/responses", json=body_for(recorded("codex"), stream=stream))
    assert r.status_code == 200, r.text
    if stream:
        done = [e for e in events(r.text) if e["type"] == "response.output_item.done"]
        items = [e["item"] for e in done]
        added = [e["item"] for e in events(r.text) if e["type"] == "response.output_item.added"]
        assert {k: added[0].get(k) for k in expected} == expected
        output = next(e for e in events(r.text) if e["type"] == "response.completed")["response"]["output"]
        assert output == items
    else:
        output = r.json()["output"]
    [item] = output
    assert item["type"] == "function_call"
    assert {k: item.get(k) for k in ("namespace", "name")} == {"namespace": expected.get("namespace"),
                                                              "name": expected["name"]}
    assert json.loads(item["arguments"]) == {"message": "look around"}


def test_codex_namespaced_call_in_history_is_flattened(fake_server) -> None:
    body = body_for(recorded("codex"))
    body["input"] = body["input"] + [
        {"type": "function_call", "call_id": "call_1", "namespace": "multi_agent_v1", "name": "wait_agent",
         "arguments": "{\"targets\": [\"a\"]}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "done"}]
    server = fake_server("ok")
    with server.client() as client:
        r = client.post("/v1/responses", json=body)
    assert r.status_code == 200, r.text
    assert "multi_agent_v1__wait_agent" in json.dumps(server.last.body["messages"])


def test_namespace_and_tool_errors_name_the_tool(fake_server) -> None:
    server = fake_server("ok")
    cases = [
        ([{"type": "namespace", "name": "ns", "tools": [{"type": "web_search"}]}], "tools.0.tools.0"),
        ([{"type": "namespace", "tools": []}], "tools.0"),
        ([{"type": "function", "name": "a__b"}, {"type": "namespace", "name": "a", "tools": [
            {"type": "function", "name": "b"}]}], "two tools are named 'a__b'"),
        ([{"type": "computer_use_preview"}], "'computer_use_preview' are not supported"),
    ]
    with server.client() as client:
        for tools, words_ in cases:
            r = client.post("/v1/responses", json={"model": "fake", "input": "hi", "tools": tools})
            assert r.status_code == 400 and words_ in r.json()["error"]["message"], r.text


def test_chat_completions_leave_out_hosted_tools(fake_server) -> None:
    server = fake_server("ok")
    tools = [{"type": "web_search_preview"},
             {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    with server.client() as client:
        r = client.post("/v1/chat/completions", json={"model": "fake", "messages": [
            {"role": "user", "content": "hi"}], "tools": tools})
        assert r.status_code == 200, r.text
        assert "web_search" not in json.dumps(server.last.body)
        r = client.post("/v1/chat/completions", json={"model": "fake", "messages": [
            {"role": "user", "content": "hi"}], "tools": [{"type": "custom", "custom": {"name": "x"}}]})
        assert r.status_code == 400, r.text


# A prompt over the context, in each family's words ----------------------------------------

OVER = fail(400, "request (2031 tokens) exceeds the available context size (512 tokens)",
            "exceed_context_size_error", n_prompt_tokens=2031, n_ctx=512)


def test_over_the_context_in_each_familys_words(fake_server) -> None:
    server = fake_server([OVER])
    chat = {"model": "fake", "messages": [{"role": "user", "content": "long"}]}
    with server.client() as client:
        for stream in (False, True):
            r = client.post("/v1/chat/completions", json=dict(chat, stream=stream))
            assert r.status_code == 400
            error = r.json()["error"]
            assert error["code"] == "context_length_exceeded" and error["type"] == "invalid_request_error"
            assert error["message"] == ("This model's maximum context length is 512 tokens. However, your "
                                        "messages resulted in 2031 tokens. Please reduce the length of the "
                                        "messages.")

            r = client.post("/v1/messages", json=dict(chat, max_tokens=5, stream=stream))
            assert r.status_code == 400
            assert r.json() == {"type": "error", "error": {
                "type": "invalid_request_error", "message": "prompt is too long: 2031 tokens > 512 maximum"}}

            r = client.post("/v1/responses", json={"model": "fake", "input": "long", "stream": stream})
            assert r.status_code == 400
            error = r.json()["error"]
            assert error["code"] == "context_length_exceeded" and error["param"] == "input"
            assert "exceeds the context window" in error["message"]

            r = client.post("/api/chat", json=dict(chat, stream=stream))
            assert r.status_code == 400
            assert r.json()["error"].startswith("the prompt is longer than the context length currently "
                                                "available to the model")


def test_ollama_unknown_model_in_ollamas_words(fake_server) -> None:
    server = fake_server("ok")
    with server.client() as client:
        for path, body in (("/api/chat", {"messages": [{"role": "user", "content": "x"}]}),
                           ("/api/embed", {"input": "x"}), ("/api/show", {})):
            r = client.post(path, json={"model": "nope", **body})
            assert (r.status_code, r.json()) == (404, {"error": "model 'nope' not found"}), path


def test_over_the_context_in_stream_in_each_familys_words(fake_server) -> None:
    """When the prompt takes longer than the first-deltas wait, the headers have gone out: the
    overflow is reported in-stream, in the same words."""
    server = fake_server([sleep(1.5), OVER])
    chat = {"model": "fake", "messages": [{"role": "user", "content": "long"}], "stream": True}
    with server.client() as client:
        r = client.post("/v1/messages", json=dict(chat, max_tokens=5))
        error = next(e for e in events(r.text) if e.get("type") == "error")
        assert error["error"]["message"] == "prompt is too long: 2031 tokens > 512 maximum"
        r = client.post("/v1/responses", json={"model": "fake", "input": "long", "stream": True})
        failed = next(e for e in events(r.text) if e.get("type") == "response.failed")
        assert failed["response"]["error"]["code"] == "context_length_exceeded"
        r = client.post("/v1/chat/completions", json=chat)
        assert next(e for e in events(r.text) if "error" in e)["error"]["code"] == "context_length_exceeded"
        r = client.post("/api/chat", json=chat)
        assert json.loads(r.text.splitlines()[-1])["error"].startswith("the prompt is longer than the context")
