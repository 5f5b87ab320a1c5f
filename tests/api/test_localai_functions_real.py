"""LocalAI's function block on a real model (SmolLM2-135M, GGUF, xllamacpp): the grammars lokal
builds from the block's options are ones llama.cpp accepts and holds the model to, the
calls come back through the OpenAI SDK, and `options:` reach the engine (speculation it
cannot run is a load error with the reason)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from tests.conftest import LokalServer, place_model

# ChatML as LocalAI's gallery writes it for SmolLM-like models (our own words).
CHATML = """\
  chat_message: |-
    <|im_start|>{{ .RoleName }}
    {{ if .FunctionCall }}{{ toJson .FunctionCall }}{{ else }}{{ .Content }}{{ end }}<|im_end|>
  function: |-
    <|im_start|>system
    You call functions by replying with JSON. The functions:
    {{ range .Functions }}- {{ .Name }}: {{ .Description }}; arguments {{ toJson .Parameters }}
    {{ end }}<|im_end|>
    {{ .Input }}
    <|im_start|>assistant
  chat: |-
    {{ .Input }}
    <|im_start|>assistant
"""

MODELS = {
    "plain": "function:\n  grammar:\n    properties_order: name,arguments\n",
    "parallel": "function:\n  grammar:\n    parallel_calls: true\n",
    "mixed": "function:\n  grammar:\n    mixed_mode: true\n    parallel_calls: true\n    expect_strings_after_json: true\n",
    "prefix": "function:\n  grammar:\n    prefix: '<call>'\n  replace_function_results:\n    - key: '<call>'\n      value: ''\n",
    "nogrammar": "function:\n  grammar:\n    disable: true\n  json_regex_match:\n    - '(?s)(\\{.*\\})'\n",
    "llama31": "function:\n  grammar:\n    schema_type: llama3.1\n",
}

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city"]}}}


def config(name: str, extra: str, options: str = "") -> str:
    return (f"name: {name}\nbackend: llama-cpp\ncontext_size: 2048\nparameters:\n  model: smol.gguf\n"
            f"  temperature: 0\n  max_tokens: 48\nstopwords:\n  - <|im_end|>\ntemplate:\n{CHATML}{extra}{options}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LokalServer]:
    folder = tmp_path_factory.mktemp("localai-functions") / "models"
    place_model(folder, "smol.gguf")
    for name, extra in MODELS.items():
        (folder / f"{name}.yaml").write_text(config(name, extra))
    (folder / "opts.yaml").write_text(config("opts", "", "options:\n  - use_jinja:true\n  - reasoning_format:none\n"
                                                       "  - parallel:2\n  - spec_type:ngram-simple\n"))
    (folder / "mtp.yaml").write_text(config("mtp", "", "options:\n  - spec_type:draft-mtp\n  - spec_n_max:3\n"))
    with LokalServer(folder, "--engine-isolation", "inprocess") as lokal:
        yield lokal


@pytest.fixture(scope="module")
def client(server: LokalServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base}/v1", api_key="x", max_retries=0, timeout=120)


def ask(client: openai.OpenAI, model: str, **kw: object) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(model=model, messages=[
        {"role": "user", "content": "What is the weather in Paris? Use the tool."}], **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("model", ["plain", "llama31"])  # JSON, and Llama 3.1's <function=NAME> tags
def test_the_grammar_holds_the_model_to_a_named_function(client: openai.OpenAI, model: str) -> None:
    answer = ask(client, model, tools=[WEATHER],
                 tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    [call] = choice.message.tool_calls or []
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert isinstance(arguments, dict) and isinstance(arguments.get("city", ""), str)


@pytest.mark.parametrize("model", ["parallel", "mixed", "prefix", "plain", "llama31"])
def test_each_grammar_option_is_accepted_and_parsed(client: openai.OpenAI, model: str) -> None:
    """The engine takes the grammar (a bad one is an error), and what the model writes
    under it comes back as calls or as text, never as raw JSON with a call in it."""
    choice = ask(client, model, tools=[WEATHER]).choices[0]
    calls = choice.message.tool_calls or []
    for call in calls:
        assert call.function.name in ("get_weather",)
        json.loads(call.function.arguments)
    if not calls:
        assert choice.message.content is not None
        assert '"name": "get_weather"' not in choice.message.content


def test_without_grammar_the_reply_is_parsed(client: openai.OpenAI) -> None:
    choice = ask(client, "nogrammar", tools=[WEATHER]).choices[0]
    assert choice.message.content is not None or choice.message.tool_calls


def test_a_streamed_call_arrives_whole(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="plain", stream=True, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}},
        messages=[{"role": "user", "content": "Weather in Paris?"}])
    names, arguments = [], ""
    for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                if call.function and call.function.name:
                    names.append(call.function.name)
                if call.function and call.function.arguments:
                    arguments += call.function.arguments
    assert names == ["get_weather"] and isinstance(json.loads(arguments), dict)


def test_options_reach_the_engine(client: openai.OpenAI, server: LokalServer) -> None:
    answer = client.chat.completions.create(model="opts", messages=[{"role": "user", "content": "Say hi"}])
    assert answer.choices[0].message.content
    assert "2 slots" in server.log()  # options: parallel:2


def test_speculation_the_model_cannot_run_is_a_load_error_with_the_reason(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="mtp", messages=[{"role": "user", "content": "hi"}])
    assert "multi-token-prediction head" in str(caught.value)
