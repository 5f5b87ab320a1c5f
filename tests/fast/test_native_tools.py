"""Native tool calls on the fake engine: a model whose chat template knows tools gets them
in its own format (tools, tool_choice and parallel_tool_calls in the engine body, past
calls and results in OpenAI's shape), the engine's parsed `delta.tool_calls` come back as
tool calls, two parallel ones included, through every API family; lokal's JSON envelope
stays for templates without tools, LocalAI templates, and `function_calling: grammar`."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lokal.engines.fake import Chunk, Step, words
from tests.fakeengine import chat, sse_events

# Enough of a Hermes / Qwen 2.5 style template for lokal to see that it takes tools.
TOOL_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n<tools>{% for tool in tools %}{{ tool | tojson }}{% endfor %}"
    "</tools><|im_end|>\n{%- endif %}"
    "{%- for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}"
    "{%- for call in message.tool_calls %}<tool_call>{{ call.function | tojson }}</tool_call>{%- endfor %}"
    "<|im_end|>\n{%- endfor %}<|im_start|>assistant\n")
PLAIN_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
                  "<|im_end|>\n{% endfor %}<|im_start|>assistant\n")

WEATHER = {"name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}}
TIME = {"name": "get_time", "description": "Time in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
TOOLS = [{"type": "function", "function": WEATHER}, {"type": "function", "function": TIME}]
CALLS = [("get_weather", '{"city": "Paris"}'), ("get_time", '{"city": "Paris"}')]


def native_calls(calls: list[tuple[str, str]] = CALLS, *, ids: bool = True, finish: str = "tool_calls",
                 text: str = "") -> list[Step]:
    """The chunks xllamacpp streams when it parses calls in a model's own format: per call
    a first part with index, id, type and name (and the first argument text), then the
    rest of the arguments in pieces; a finish chunk, then the usage."""
    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> Step:
        return Chunk({"choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
                      "object": "chat.completion.chunk"})

    steps = [chunk({"role": "assistant", "content": None})]
    if text:
        steps.append(chunk({"content": text}))
    for position, (name, arguments) in enumerate(calls):
        first: dict[str, Any] = {"index": position, "type": "function",
                                 "function": {"name": name, "arguments": arguments[:1]}}
        if ids:
            first["id"] = f"engine{position}"
        steps.append(chunk({"tool_calls": [first]}))
        for i in range(1, len(arguments), 4):
            steps.append(chunk({"tool_calls": [{"index": position, "function": {"arguments": arguments[i:i + 4]}}]}))
    steps.append(chunk({}, finish))
    steps.append(Chunk({"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 20,
                                                 "total_tokens": 32}}))
    return steps


@pytest.fixture
def native(fake_server):
    def start(script: Any = None, **kwargs: Any):
        kwargs.setdefault("chat_template", TOOL_TEMPLATE)
        return fake_server(native_calls() if script is None else script, **kwargs)
    return start


def _calls(message: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in message["tool_calls"]]


def test_engine_gets_tools_and_openai_shaped_history(native) -> None:
    server = native()
    history = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "10:00"},
        {"role": "user", "content": "And now?"},
    ]
    with server.client() as client:
        r = client.post("/v1/chat/completions", json={"model": "fake", "messages": history, "tools": TOOLS})
    assert r.status_code == 200, r.text
    body = server.last.body
    assert body["tools"] == TOOLS
    assert body["tool_choice"] == "auto" and body["parallel_tool_calls"] is True
    assert "json_schema" not in body and "response_format" not in body and "grammar" not in body
    messages = body["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "tool", "user"]
    assert messages[0]["content"] == "Be brief."  # no lokal function instructions
    assert messages[2]["tool_calls"] == history[2]["tool_calls"]
    assert messages[3]["tool_call_id"] == "call_1" and messages[3]["content"] == "sunny"
    assert messages[4]["tool_call_id"] == "call_2"


def test_tool_choice_and_parallel_flag_reach_the_engine(native) -> None:
    server = native()
    with server.client() as client:
        client.post("/v1/chat/completions", json=chat("hi", tools=TOOLS, parallel_tool_calls=False))
        body = server.last.body
        assert body["tool_choice"] == "auto" and body["parallel_tool_calls"] is False
        # A call that must happen (required, or a named function) is enforced by lokal's
        # grammar: the engine does not hold a native-format model to it.
        client.post("/v1/chat/completions", json=chat("hi", tools=TOOLS, tool_choice="required"))
        body = server.last.body
        assert "tools" not in body and "json_schema" in body
        client.post("/v1/chat/completions", json=chat("hi", tools=TOOLS, tool_choice={
            "type": "function", "function": {"name": "get_time"}}))
        body = server.last.body
        assert "tools" not in body and body["json_schema"]["properties"]["function"] == {"const": "get_time"}
        client.post("/v1/chat/completions", json=chat("hi", tools=TOOLS, tool_choice="none"))
        assert server.last.body["tool_choice"] == "none"
        r = client.post("/v1/chat/completions", json=chat("hi", tools=TOOLS, tool_choice={
            "type": "function", "function": {"name": "nope"}}))
        assert r.status_code == 400 and "nope" in r.json()["error"]["message"]
        # Anthropic's disable_parallel_tool_use
        client.post("/v1/messages", json={"model": "fake", "max_tokens": 50, "messages": [
            {"role": "user", "content": "hi"}], "tools": [{"name": "get_weather", "input_schema": WEATHER["parameters"]}],
            "tool_choice": {"type": "auto", "disable_parallel_tool_use": True}})
        assert server.last.body["parallel_tool_calls"] is False
        client.post("/v1/responses", json={"model": "fake", "input": "hi", "parallel_tool_calls": False,
                                           "tools": [{"type": "function", **WEATHER}]})
        assert server.last.body["parallel_tool_calls"] is False
        # Legacy functions answer with one function_call: never parallel.
        client.post("/v1/chat/completions", json=chat("hi", functions=[WEATHER]))
        assert server.last.body["parallel_tool_calls"] is False
        # A past call whose arguments are not a JSON object cannot go to the template.
        r = client.post("/v1/chat/completions", json={"model": "fake", "tools": TOOLS, "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                                  "function": {"name": "get_time", "arguments": "[1"}}]},
            {"role": "tool", "tool_call_id": "c", "content": "x"}]})
        assert r.status_code == 400, r.text
        assert "not a JSON object" in r.json()["error"]["message"]
        assert client.get("/readyz").status_code in (200, 404)  # still serving


def test_openai_two_parallel_calls_whole_and_streamed(native) -> None:
    server = native()
    with server.client() as client:
        r = client.post("/v1/chat/completions", json=chat("Weather and time in Paris?", tools=TOOLS))
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["content"] is None
        assert _calls(choice["message"]) == [("get_weather", {"city": "Paris"}), ("get_time", {"city": "Paris"})]
        assert [c["id"] for c in choice["message"]["tool_calls"]] == ["engine0", "engine1"]
        assert all(c["type"] == "function" for c in choice["message"]["tool_calls"])

        r = client.post("/v1/chat/completions", json=chat("Weather and time in Paris?", tools=TOOLS, stream=True))
        events = [e for e in sse_events(r.text) if e != "[DONE]"]
    parts = [c for e in events for ch in e["choices"] for c in (ch["delta"].get("tool_calls") or [])]
    assert {p["index"] for p in parts} == {0, 1}
    starts = [p for p in parts if "id" in p]
    assert [(p["index"], p["id"], p["function"]["name"]) for p in starts] == [
        (0, "engine0", "get_weather"), (1, "engine1", "get_time")]
    for position, (_, arguments) in enumerate(CALLS):
        assert "".join(p["function"]["arguments"] for p in parts if p["index"] == position) == arguments
    assert [ch["finish_reason"] for e in events for ch in e["choices"] if ch["finish_reason"]] == ["tool_calls"]


def test_calls_without_engine_ids_get_ids(native) -> None:
    server = native(native_calls(ids=False))
    with server.client() as client:
        message = client.post("/v1/chat/completions", json=chat("hi", tools=TOOLS)).json()["choices"][0]["message"]
    ids = [c["id"] for c in message["tool_calls"]]
    assert all(i and i.startswith("call_") for i in ids) and len(set(ids)) == 2


def test_text_before_calls_and_cut_calls(native) -> None:
    server = native(native_calls(text="Let me check.", finish="length"))
    with server.client() as client:
        choice = client.post("/v1/chat/completions", json=chat("hi", tools=TOOLS)).json()["choices"][0]
    assert choice["message"]["content"] == "Let me check."
    assert len(choice["message"]["tool_calls"]) == 2
    assert choice["finish_reason"] == "length"


def test_anthropic_two_tool_use_blocks(native) -> None:
    server = native()
    request = {"model": "fake", "max_tokens": 100, "messages": [{"role": "user", "content": "Paris?"}],
               "tools": [{"name": t["name"], "description": t["description"], "input_schema": t["parameters"]}
                         for t in (WEATHER, TIME)]}
    with server.client() as client:
        r = client.post("/v1/messages", json=request)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["stop_reason"] == "tool_use"
        assert [(b["type"], b["name"], b["input"]) for b in answer["content"]] == [
            ("tool_use", "get_weather", {"city": "Paris"}), ("tool_use", "get_time", {"city": "Paris"})]
        assert len({b["id"] for b in answer["content"]}) == 2
        assert server.last.body["tools"][0]["function"]["name"] == "get_weather"

        r = client.post("/v1/messages", json=dict(request, stream=True))
    events = sse_events(r.text)
    starts = [e for e in events if e["type"] == "content_block_start"]
    assert [(e["index"], e["content_block"]["name"]) for e in starts] == [(0, "get_weather"), (1, "get_time")]
    stops = [e["index"] for e in events if e["type"] == "content_block_stop"]
    assert stops == [0, 1]
    for index, (_, arguments) in enumerate(CALLS):
        json_text = "".join(e["delta"]["partial_json"] for e in events
                            if e["type"] == "content_block_delta" and e["index"] == index)
        assert json.loads(json_text) == json.loads(arguments)
    [delta] = [e for e in events if e["type"] == "message_delta"]
    assert delta["delta"]["stop_reason"] == "tool_use"


def test_responses_two_function_call_items(native) -> None:
    server = native()
    request = {"model": "fake", "input": "Weather and time in Paris?",
               "tools": [{"type": "function", **WEATHER}, {"type": "function", **TIME}]}
    with server.client() as client:
        r = client.post("/v1/responses", json=request)
        assert r.status_code == 200, r.text
        output = r.json()["output"]
        assert [(o["type"], o["name"], json.loads(o["arguments"])) for o in output] == [
            ("function_call", "get_weather", {"city": "Paris"}), ("function_call", "get_time", {"city": "Paris"})]
        assert [o["call_id"] for o in output] == ["engine0", "engine1"]

        r = client.post("/v1/responses", json=dict(request, stream=True))
    events = sse_events(r.text)
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [(e["output_index"], e["name"], json.loads(e["arguments"])) for e in done] == [
        (0, "get_weather", {"city": "Paris"}), (1, "get_time", {"city": "Paris"})]
    added = [e["item"]["call_id"] for e in events if e["type"] == "response.output_item.added"]
    assert added == ["engine0", "engine1"]
    [completed] = [e for e in events if e["type"] == "response.completed"]
    assert [o["name"] for o in completed["response"]["output"]] == ["get_weather", "get_time"]


def test_ollama_two_tool_calls(native) -> None:
    server = native()
    request = {"model": "fake", "messages": [{"role": "user", "content": "Paris?"}], "tools": TOOLS}
    with server.client() as client:
        r = client.post("/api/chat", json=dict(request, stream=False))
        assert r.status_code == 200, r.text
        calls = r.json()["message"]["tool_calls"]
        assert [(c["function"]["index"], c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
            (0, "get_weather", {"city": "Paris"}), (1, "get_time", {"city": "Paris"})]

        r = client.post("/api/chat", json=dict(request, stream=True))
    lines = [json.loads(line) for line in r.text.splitlines() if line.strip()]
    streamed = [c for line in lines for c in line["message"].get("tool_calls") or []]
    assert [c["function"]["name"] for c in streamed] == ["get_weather", "get_time"]
    assert lines[-1]["done"] is True


def test_grammar_path_for_plain_templates_localai_templates_and_the_setting(fake_server) -> None:
    call = '{"function": "get_weather", "arguments": {"city": "Paris"}}'
    cases = [
        {"chat_template": PLAIN_TEMPLATE},  # a template without tools
        {"chat_template": TOOL_TEMPLATE, "config": "function_calling: grammar\n"},
        {"chat_template": TOOL_TEMPLATE,
         "config": "template:\n  chat_message: '{{.RoleName}}: {{.Content}}'\n"},  # LocalAI templates
    ]
    for case in cases:
        server = fake_server([words(call)], **case)
        with server.client() as client:
            r = client.post("/v1/chat/completions", json=chat("Weather?", tools=TOOLS))
        assert r.status_code == 200, (case, r.text)
        assert _calls(r.json()["choices"][0]["message"]) == [("get_weather", {"city": "Paris"})], case
        body = server.last.body
        assert "json_schema" in body and "tools" not in body, case


def test_native_setting_with_localai_templates_is_a_config_error(fake_server) -> None:
    server = fake_server(chat_template=TOOL_TEMPLATE, config=(
        "function_calling: native\ntemplate:\n  chat_message: '{{.RoleName}}: {{.Content}}'\n"))
    with server.client() as client:
        r = client.post("/v1/chat/completions", json=chat("hi"))
    assert r.status_code >= 400
    assert "function_calling: native" in r.json()["error"]["message"]


def test_without_tools_nothing_changes(native) -> None:
    server = native("Hello there.")
    with server.client() as client:
        r = client.post("/v1/chat/completions", json=chat("hi"))
    assert r.json()["choices"][0]["message"]["content"] == "Hello there."
    assert "tools" not in server.last.body and "parallel_tool_calls" not in server.last.body


def test_parallel_calls_off_passes_on_the_first_call_only(native) -> None:
    """The engine may parse a second call even with parallel_tool_calls false (xllamacpp
    2026.10 does): the client asked for one, and gets one."""
    server = native()
    with server.client() as client:
        choice = client.post("/v1/chat/completions", json=chat("hi", tools=TOOLS, parallel_tool_calls=False)
                             ).json()["choices"][0]
        assert _calls(choice["message"]) == [("get_weather", {"city": "Paris"})]
        assert choice["finish_reason"] == "tool_calls"
        r = client.post("/v1/messages", json={
            "model": "fake", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"name": t["name"], "input_schema": t["parameters"]} for t in (WEATHER, TIME)],
            "tool_choice": {"type": "auto", "disable_parallel_tool_use": True}, "stream": True})
    starts = [e for e in sse_events(r.text) if e["type"] == "content_block_start"]
    assert [e["content_block"]["name"] for e in starts] == ["get_weather"]


@pytest.mark.parametrize("template, expected", [
    (TOOL_TEMPLATE, True),
    (PLAIN_TEMPLATE, False),
    ("{%- if tools is defined and tools %}{{ tools | tojson }}{% endif %}{{ messages }}", True),
    ("{% for m in messages %}{{ m['tool_calls'] | tojson }}{% endfor %}", True),  # message['tool_calls']
    ("{% for m in messages %}{% if m.tool_calls %}x{% endif %}{% endfor %}", True),
    ("Ask me about tools! {{ messages[0].content }}", False),  # the word outside Jinja code
])
def test_template_takes_tools(template: str, expected: bool) -> None:
    from lokal.models.catalog import template_supports_tools

    assert template_supports_tools({"tokenizer.chat_template": template}) is expected
    assert template_supports_tools({"tokenizer.chat_template": PLAIN_TEMPLATE,
                                    "tokenizer.chat_template.tool_use": template}) is True
    assert template_supports_tools({}) is False
