"""LocalAI's `function:` block and `template.function` through lokal's API, on the fake
engine: each option's rendered prompt and grammar (what the engine was asked) and the
calls parsed from scripted model text, in every API family's shape."""

from __future__ import annotations

import json
from typing import Any

from lokal.engines.fake import words
from tests.fakeengine import chat, sse_events

WEATHER = {"name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
TIME = {"name": "get_time", "description": "The time", "parameters": {"type": "object", "properties": {}}}
TOOLS = [{"type": "function", "function": WEATHER}, {"type": "function", "function": TIME}]

TEMPLATES = """\
template:
  chat_message: "<{{.RoleName}}>{{ if .FunctionCall }}CALLED {{ toJson .FunctionCall }}{{ else }}{{.Content}}{{ end }}</{{.RoleName}}>"
  function: "<tools>{{ range .Functions }}[{{.Name}}: {{.Description}} {{ toJson .Parameters }}]{{ end }}</tools>{{.Input}}<assistant>"
  chat: "{{.Input}}<assistant>"
"""


def config(function: str = "") -> str:
    return TEMPLATES + function


def post(server: Any, body: dict[str, Any], path: str = "/v1/chat/completions") -> dict[str, Any]:
    with server.client() as client:
        r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def message(server: Any, text: str = "Weather in Paris?", **fields: Any) -> dict[str, Any]:
    fields.setdefault("tools", TOOLS)
    return post(server, chat(text, **fields))["choices"][0]


LLAMA31 = """\
function:
  disable_no_action: true
  grammar:
    disable: true
  response_regex:
    - <function=(?P<name>\\w+)>(?P<arguments>.*)</function>
"""


def test_response_regex_without_grammar_renders_the_function_template(fake_server) -> None:
    server = fake_server([words('<function=get_weather>{"city": "Paris"}</function>')], config=config(LLAMA31))
    choice = message(server)
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert choice["message"]["content"] in (None, "")
    body = server.last.body
    assert server.last.mode == "completion" and "grammar" not in body and "json_schema" not in body
    assert body["prompt"] == (
        '<tools>[get_weather: Weather for a city {"properties":{"city":{"type":"string"}},"required":["city"],'
        '"type":"object"}][get_time: The time {"properties":{},"type":"object"}]</tools>'
        "<user>Weather in Paris?</user><assistant>")


def test_without_tools_the_chat_template_renders(fake_server) -> None:
    server = fake_server([words("Hello there.")], config=config(LLAMA31))
    choice = message(server, "hi", tools=[])
    assert choice["message"]["content"] == "Hello there."
    assert server.last.body["prompt"] == "<user>hi</user><assistant>"


def test_the_grammar_holds_a_call_or_the_no_action_reply(fake_server) -> None:
    server = fake_server(lambda req: [words('{"name": "answer", "arguments": {"message": "It is sunny."}}')]
                         if "sunny" in req.body["prompt"] else
                         [words('{"name": "get_weather", "arguments": {"city": "Paris"}}')], config=config())
    choice = message(server)
    [call] = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    grammar = server.last.body["grammar"]
    assert "root ::= realvalue" in grammar.splitlines()
    for name in ("get_weather", "get_time", "answer"):
        assert f'"\\"{name}\\""' in grammar
    assert "<tools>" in server.last.body["prompt"]  # the function template lists the request's tools only
    assert "[answer:" not in server.last.body["prompt"]
    reply = message(server, "Is it sunny?")
    assert reply["message"] == {"role": "assistant", "content": "It is sunny."}
    assert reply["finish_reason"] == "stop"


def test_a_named_function_narrows_the_grammar(fake_server) -> None:
    server = fake_server([words('{"name": "get_time", "arguments": {}}')], config=config())
    choice = message(server, tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "get_time"
    grammar = server.last.body["grammar"]
    assert '"\\"get_time\\""' in grammar and "get_weather" not in grammar and "answer" not in grammar


PARALLEL = """\
function:
  grammar:
    disable: true
    parallel_calls: true
  json_regex_match:
    - "(?s)\\\\[CALLS\\\\](.*)"
  replace_function_results:
    - key: '(?s)^[^{\\[]*'
      value: ""
    - key: '(?s)[^}\\]]*$'
      value: ""
"""
TWO_CALLS = '[CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {}}] ok'


def test_parallel_calls_from_a_matched_json_array(fake_server) -> None:
    server = fake_server([words(TWO_CALLS)], config=config(PARALLEL))
    calls = message(server)["message"]["tool_calls"]
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == \
        [("get_weather", {"city": "Paris"}), ("get_time", {})]
    assert len({c["id"] for c in calls}) == 2
    one = message(server, parallel_tool_calls=False)["message"]["tool_calls"]
    assert [c["function"]["name"] for c in one] == ["get_weather"]


def test_parallel_calls_stream_as_tool_call_chunks(fake_server) -> None:
    server = fake_server([words(TWO_CALLS)], config=config(PARALLEL))
    with server.client() as client:
        r = client.post("/v1/chat/completions", json=chat("Weather?", tools=TOOLS, stream=True))
    events = [e for e in sse_events(r.text) if isinstance(e, dict)]
    deltas = [d for e in events for c in e["choices"] for d in c["delta"].get("tool_calls") or []]
    assert {d["index"] for d in deltas} == {0, 1}
    assert [d["function"]["name"] for d in deltas if d.get("function", {}).get("name")] == ["get_weather", "get_time"]
    assert "[CALLS]" not in "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])
    assert [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]] == ["tool_calls"]


def test_grammar_options_reach_the_engine(fake_server) -> None:
    fn = """\
function:
  grammar:
    parallel_calls: true
    mixed_mode: true
    triggers:
      - word: "<json>"
"""
    server = fake_server([words("Just text, no call.")], config=config(fn))
    choice = message(server)
    assert choice["message"]["content"] == "Just text, no call." and "tool_calls" not in choice["message"]
    body = server.last.body
    assert "root ::= mixedstring | arr | realvalue" in body["grammar"].splitlines()
    assert body["grammar_lazy"] is True and body["grammar_triggers"] == [{"type": 1, "value": "<json>"}]


def test_capture_and_replace_llm_results(fake_server) -> None:
    fn = """\
function:
  grammar:
    disable: true
  replace_llm_results:
    - key: "(?s)<think>(.*?)</think>"
      value: ""
  capture_llm_results:
    - "(?s)<think>(.*?)</think>"
"""
    server = fake_server([words('<think>I should check.</think>{"name": "get_weather", "arguments": {"city": "Rome"}}')],
                         config=config(fn))
    choice = message(server)
    assert choice["message"]["content"] == "I should check."
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_argument_regex_makes_json_of_key_value_pairs(fake_server) -> None:
    fn = """\
function:
  grammar:
    disable: true
  response_regex:
    - \\[(?P<name>\\w+)\\((?P<arguments>.*)\\)\\]
  argument_regex:
    - (?P<key>\\w+)\\s*=\\s*'(?P<value>[^']*)'
"""
    server = fake_server([words("[get_weather(city='Paris', unit='c')]")], config=config(fn))
    [call] = message(server)["message"]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Paris","unit":"c"}'}


def test_past_calls_and_results_render_through_function_call(fake_server) -> None:
    server = fake_server([words("It is 20 degrees.")], config=config(LLAMA31))
    history = [{"role": "user", "content": "Weather?"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                                      "arguments": '{"city":"Paris"}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "20C"}]
    body = {"model": "fake", "messages": history, "tools": TOOLS}
    choice = post(server, body)["choices"][0]
    assert choice["message"]["content"] == "It is 20 degrees."
    prompt = server.last.body["prompt"]
    # LocalAI's ToolCall struct, marshalled in its field order
    assert ('<assistant>CALLED [{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather",'
            '"arguments":"{\\"city\\":\\"Paris\\"}"}}]</assistant>\n<tool>20C</tool>') in prompt


def test_the_fallback_parses_calls_a_native_model_wrote_as_text(fake_server) -> None:
    fn = "function:\n  automatic_tool_parsing_fallback: true\ntemplate:\n  use_tokenizer_template: true\n"
    server = fake_server([words('<tool_call>{"name": "get_weather", "arguments": "Paris"}</tool_call>')],
                         config=fn, chat_template="{% for m in messages %}{{ m.content }}{% endfor %}{{ tools }}")
    choice = message(server)
    [call] = choice["message"]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"query":"Paris"}'}
    assert server.last.mode == "chat" and server.last.body["tools"]  # the template got the tools


def test_cutstrings_and_trims_touch_up_the_reply(fake_server) -> None:
    server = fake_server([words("<scratch>plan</scratch>Answer: 42. ")],
                         config="cutstrings:\n  - '<scratch>.*?</scratch>'\ntrimspace:\n  - 'Answer:'\n")
    assert message(server, "?", tools=[])["message"]["content"] == "42."


def test_a_config_that_says_nothing_keeps_lokals_envelope(fake_server) -> None:
    plain = "\n".join(line for line in TEMPLATES.splitlines() if "function:" not in line) + "\n"
    server = fake_server([words('{"function": "get_weather", "arguments": {"city": "Oslo"}}')], config=plain)
    choice = message(server)
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert "json_schema" in server.last.body and "grammar" not in server.last.body


def test_every_api_family_gets_the_calls(fake_server) -> None:
    server = fake_server([words(TWO_CALLS)], config=config(PARALLEL))
    with server.client() as client:
        anthropic = client.post("/v1/messages", json={
            "model": "fake", "max_tokens": 64, "messages": [{"role": "user", "content": "Weather?"}],
            "tools": [{"name": t["function"]["name"], "description": t["function"]["description"],
                       "input_schema": t["function"]["parameters"]} for t in TOOLS]}).json()
        ollama = client.post("/api/chat", json={"model": "fake", "stream": False, "tools": TOOLS,
                                                "messages": [{"role": "user", "content": "Weather?"}]}).json()
        responses = client.post("/v1/responses", json={
            "model": "fake", "input": "Weather?",
            "tools": [{"type": "function", **t["function"]} for t in TOOLS]}).json()
    assert [b["name"] for b in anthropic["content"] if b["type"] == "tool_use"] == ["get_weather", "get_time"]
    assert anthropic["stop_reason"] == "tool_use"
    assert [c["function"]["name"] for c in ollama["message"]["tool_calls"]] == ["get_weather", "get_time"]
    assert [o["name"] for o in responses["output"] if o["type"] == "function_call"] == ["get_weather", "get_time"]
