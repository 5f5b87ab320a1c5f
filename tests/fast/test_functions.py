"""Function calling: the engine's JSON envelope comes back as tool_calls, function_call or content."""

from __future__ import annotations

import json
from typing import Any

from lokal.engines.fake import words
from tests.fakeengine import chat, sse_events

WEATHER = {"name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}}
TIME = {"name": "get_time", "parameters": {"type": "object", "properties": {}}}
TOOLS = [{"type": "function", "function": WEATHER}, {"type": "function", "function": TIME}]
CALL = '{"function": "get_weather", "arguments": {"city": "Paris"}}'


def _json_tokens(text: str, finish: str = "stop") -> list[Any]:
    """The JSON split into small tokens, as a model would stream it."""
    return [words(text, finish=finish)]


def test_tools_call_comes_back_as_tool_calls(fake_server) -> None:
    server = fake_server(_json_tokens(CALL))
    with server.client() as client:
        r = client.post("/v1/chat/completions", json=chat("Weather in Paris?", tools=TOOLS))
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] is None and message["role"] == "assistant"
    [call] = message["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    # The engine was told the functions and constrained to the envelope's schema.
    body = server.last.body
    assert "response_format" not in body and "grammar" not in body
    options = body["json_schema"]["oneOf"]
    assert [o["properties"].get("function", {}).get("const") for o in options] == ["get_weather", "get_time", None]
    assert options[-1]["required"] == ["answer"]
    assert body["messages"][0]["role"] == "system" and "get_weather" in body["messages"][0]["content"]
    assert "tools" not in body and "tool_choice" not in body


def test_legacy_functions_call_comes_back_as_function_call(fake_server) -> None:
    server = fake_server(_json_tokens(CALL))
    with server.client() as client:
        r = client.post("/v1/chat/completions", json=chat("Weather in Paris?", functions=[WEATHER]))
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "function_call"
    assert choice["message"]["content"] is None
    assert choice["message"]["function_call"]["name"] == "get_weather"
    assert json.loads(choice["message"]["function_call"]["arguments"]) == {"city": "Paris"}
    assert "tool_calls" not in choice["message"]
    assert "functions" not in server.last.body and "function_call" not in server.last.body


def test_answer_envelope_comes_back_as_content(fake_server) -> None:
    server = fake_server(_json_tokens('{"answer": "It is sunny."}'))
    with server.client() as client:
        for extra in ({"tools": TOOLS}, {"functions": [WEATHER]}):
            choice = client.post("/v1/chat/completions", json=chat("hi", **extra)).json()["choices"][0]
            assert choice["message"] == {"role": "assistant", "content": "It is sunny."}
            assert choice["finish_reason"] == "stop"


def test_call_cut_by_max_tokens_is_still_a_call(fake_server) -> None:
    """Issue #11: a call cut short keeps its arguments as far as they got, with finish
    length; the envelope itself never reaches the client."""
    server = fake_server(_json_tokens('{"function": "get_weather", "arguments": {"city": "Pa', "length"))
    with server.client() as client:
        choice = client.post("/v1/chat/completions", json=chat("hi", tools=TOOLS)).json()["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Pa'}


def test_answer_cut_by_max_tokens_is_the_text_so_far(fake_server) -> None:
    server = fake_server(_json_tokens('{"answer": "Hello the', "length"))
    with server.client() as client:
        choice = client.post("/v1/chat/completions", json=chat("hi", tools=TOOLS)).json()["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Hello the"}
    assert choice["finish_reason"] == "length"


def test_reply_that_is_not_the_envelope_is_handed_back(fake_server) -> None:
    server = fake_server(_json_tokens("Plain words, no JSON."))
    with server.client() as client:
        choice = client.post("/v1/chat/completions", json=chat("hi", tools=TOOLS)).json()["choices"][0]
    assert choice["message"]["content"] == "Plain words, no JSON."
    assert choice["finish_reason"] == "stop"  # ended by EOS, not by the limit


def _stream(client, **body):
    with client.stream("POST", "/v1/chat/completions", json=chat(stream=True, **body)) as r:
        assert r.status_code == 200
        return sse_events(r.read().decode())


def test_streamed_tool_call_streams_and_reassembles_to_the_whole_answer(fake_server) -> None:
    server = fake_server(_json_tokens(CALL))
    with server.client() as client:
        events = _stream(client, content="hi", tools=TOOLS, stream_options={"include_usage": True})
        whole = client.post("/v1/chat/completions", json=chat("hi", tools=TOOLS)).json()
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks
             if c["choices"] and c["choices"][0]["delta"].get("tool_calls")]
    # The call's id and name first, then its arguments as they are generated.
    assert len(calls) > 1
    assert calls[0]["function"]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
    assert all("name" not in c["function"] for c in calls[1:])
    arguments = "".join(c["function"]["arguments"] for c in calls)
    assert json.loads(arguments) == {"city": "Paris"}
    assert not any(c["choices"] and c["choices"][0]["delta"].get("content") for c in chunks)
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "tool_calls"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    [whole_call] = whole["choices"][0]["message"]["tool_calls"]
    assert whole_call["function"] == {"name": "get_weather", "arguments": arguments}


def test_streamed_legacy_function_call_and_answer(fake_server) -> None:
    def script(request):
        return _json_tokens(CALL if "weather" in request.last_user else '{"answer": "Hi!"}')

    server = fake_server(script)
    with server.client() as client:
        called = _stream(client, content="weather?", functions=[WEATHER])
        answered = _stream(client, content="hello", functions=[WEATHER])
    deltas = [c["choices"][0]["delta"] for c in called[:-1] if c["choices"]]
    calls = [d["function_call"] for d in deltas if "function_call" in d]
    assert calls[0]["name"] == "get_weather"
    assert json.loads("".join(c["arguments"] for c in calls)) == {"city": "Paris"}
    assert called[-2]["choices"][0]["finish_reason"] == "function_call"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in answered[:-1] if c["choices"])
    assert text == "Hi!"
    assert answered[0]["choices"][0]["delta"]["role"] == "assistant"
    assert answered[-2]["choices"][0]["finish_reason"] == "stop"
    assert called[-1] == answered[-1] == "[DONE]"


def test_tool_choice_none_is_a_plain_chat(fake_server) -> None:
    server = fake_server(_json_tokens("Just text."))
    with server.client() as client:
        choice = client.post("/v1/chat/completions",
                             json=chat("hi", tools=TOOLS, tool_choice="none")).json()["choices"][0]
    assert choice["message"]["content"] == "Just text."
    assert "json_schema" not in server.last.body
    assert server.last.body["messages"] == [{"role": "user", "content": "hi"}]


def test_forced_tool_choice_allows_only_that_call(fake_server) -> None:
    server = fake_server(_json_tokens('{"function": "get_time", "arguments": {}}'))
    with server.client() as client:
        r = client.post("/v1/chat/completions", json=chat("hi", tools=TOOLS, tool_choice={
            "type": "function", "function": {"name": "get_time"}}))
        unknown = client.post("/v1/chat/completions", json=chat("hi", tools=TOOLS, tool_choice={
            "type": "function", "function": {"name": "nope"}}))
    assert r.json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_time"
    schema = server.last.body["json_schema"]
    assert "oneOf" not in schema and schema["properties"]["function"] == {"const": "get_time"}
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "tool_choice"
    assert len(server.calls) == 1  # the refused request never reached the engine


def test_past_calls_and_results_reach_the_engine_as_text(fake_server) -> None:
    server = fake_server(_json_tokens('{"answer": "18 degrees in Paris."}'))
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
    ]
    with server.client() as client:
        r = client.post("/v1/chat/completions", json={"model": "fake", "messages": messages, "tools": TOOLS})
    assert r.json()["choices"][0]["message"]["content"] == "18 degrees in Paris."
    sent = server.last.body["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert json.loads(sent[2]["content"]) == {"function": "get_weather", "arguments": {"city": "Paris"}}
    assert sent[3]["content"] == "Result of call_1: 18C"
