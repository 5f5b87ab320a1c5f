"""Native tool calls on the real engine: SmolLM2 rewritten with a Hermes 2 Pro / Qwen 2.5
style chat template (`<tool_call>` blocks), the format llama.cpp finds in a template's
text. lokal must see at scan that the template takes tools, hand the tools to it (the
rendered prompt lists them), and return the calls the engine parses from the model's
output as tool_calls, streamed and whole, two parallel ones included.

The tiny model does not call tools on its own; a few earlier turns in which the assistant
called both tools make it repeat them (greedy), which is a scripted native output that
the engine parses as it would a real tool-calling model's."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.conftest import LokalServer, smollm_gguf

TEMPLATE = """\
{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}
{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n' }}
{{- 'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}
{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}
{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments ' }}
{{- 'within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{"name": <function-name>, ' }}
{{- '"arguments": <args-json-object>}\\n</tool_call><|im_end|>\\n' }}
{%- elif messages[0].role == 'system' %}
{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'user' or (message.role == 'system' and not loop.first) or (message.role == 'assistant' and not message.tool_calls) %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
{%- elif message.role == 'assistant' %}
{{- '<|im_start|>assistant' }}
{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}
{%- for tool_call in message.tool_calls %}
{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
{{- '\\n<tool_call>\\n{"name": "' + tool_call.name + '", "arguments": ' }}
{%- if tool_call.arguments is string %}{{- tool_call.arguments }}{%- else %}{{- tool_call.arguments | tojson }}{%- endif %}
{{- '}\\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- elif message.role == 'tool' %}
{%- if loop.index0 == 0 or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""

MODEL = "tools"


def _tool(name: str, description: str) -> dict:
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


TOOLS = [_tool("get_weather", "The weather in a city"), _tool("get_time", "The local time in a city")]
QUESTION = {"role": "user", "content": "Weather and time in Paris?"}
BOTH = {"role": "assistant", "content": "", "tool_calls": [
    {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
    {"id": "c2", "type": "function", "function": {"name": "get_time", "arguments": '{"city": "Paris"}'}}]}
# Two earlier turns in which the assistant called both tools: greedy, the model repeats them.
FEW_SHOT = [QUESTION, BOTH, QUESTION, BOTH, QUESTION]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder with SmolLM2 whose GGUF header carries the tool-capable template."""
    folder = tmp_path_factory.mktemp("native") / "models"
    folder.mkdir()
    template = folder.parent / "template.jinja"
    template.write_text(TEMPLATE)
    subprocess.run([sys.executable, "-m", "gguf.scripts.gguf_new_metadata", str(smollm_gguf()),
                    str(folder / f"{MODEL}.gguf"), "--chat-template-file", str(template), "--force"],
                   check=True, capture_output=True)
    (folder / f"{MODEL}.yaml").write_text(f"name: {MODEL}\nparameters:\n  model: {MODEL}.gguf\n"
                                          "  temperature: 0\ncontext_size: 2048\n")
    (folder / "grammar.yaml").write_text(f"name: grammar\nparameters:\n  model: {MODEL}.gguf\n"
                                         "  temperature: 0\ncontext_size: 2048\nfunction_calling: grammar\n")
    return folder


def test_scan_sees_the_template_take_tools_and_the_engine_renders_them(models: Path) -> None:
    from lokal.engines.base import LoadOptions
    from lokal.engines.llamacpp import LlamaCppEngine
    from lokal.models.catalog import scan_models
    from lokal.models.prompting import plan_chat
    from lokal.tasks import ChatTask, Message, Tool, ToolCall

    entries = {e.name: e for e in scan_models(models)}
    entry = entries[MODEL]
    assert entry.native_tools and entry.tool_format == "native"
    assert entries["grammar"].native_tools and entries["grammar"].tool_format == "grammar"

    task = ChatTask(MODEL, [
        Message("user", "Weather in Paris?"),
        Message("assistant", "", tool_calls=[ToolCall("c1", "get_weather", '{"city": "Paris"}')]),
        Message("tool", "sunny", tool_call_id="c1"),
        Message("user", "Thanks!")],
        tools=[Tool("get_weather", "The weather in a city", {"type": "object", "properties": {
            "city": {"type": "string"}}})])
    call = plan_chat(entry, task)
    assert "json_schema" not in call.body and call.body["tools"][0]["function"]["name"] == "get_weather"
    engine = LlamaCppEngine(LoadOptions(model_path=entry.model_path, context_size=1024, threads=2, parallel=1))
    try:
        prompt = engine.render_prompt(call.body)
        # The grammar path's prompt for comparison: lokal's own instructions, history as text.
        grammar_prompt = engine.render_prompt(plan_chat(entries["grammar"], task).body)
    finally:
        engine.close()
    assert "<tools>\n{" in prompt and '"name": "get_weather"' in prompt
    assert '"description": "The weather in a city"' in prompt
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt
    assert "<tool_response>\nsunny\n</tool_response>" in prompt
    assert "You can call these functions" not in prompt
    assert "<tools>" not in grammar_prompt and "You can call these functions" in grammar_prompt


@pytest.fixture(scope="module")
def served(models: Path) -> Iterator[LokalServer]:
    with LokalServer(models, "--preload-models", MODEL) as server:
        server.wait_ready(120)
        yield server


@pytest.fixture
def client(served: LokalServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served.base}/v1", api_key="x", max_retries=0, timeout=300)


def _calls(calls) -> list[tuple[str, dict]]:
    return [(c.function.name, json.loads(c.function.arguments)) for c in calls]


PARIS = {"city": "Paris"}


def test_two_parallel_native_calls_whole(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=FEW_SHOT, tools=TOOLS, max_tokens=100)
    choice = reply.choices[0]
    assert _calls(choice.message.tool_calls) == [("get_weather", PARIS), ("get_time", PARIS)]
    ids = [c.id for c in choice.message.tool_calls]
    assert all(ids) and len(set(ids)) == len(ids)
    assert not choice.message.content
    assert choice.finish_reason == "tool_calls"


def test_two_parallel_native_calls_streamed(client: openai.OpenAI) -> None:
    parts = []
    finish = None
    with client.chat.completions.create(model=MODEL, messages=FEW_SHOT, tools=TOOLS, max_tokens=100,
                                        stream=True) as stream:
        for chunk in stream:
            for choice in chunk.choices:
                parts += choice.delta.tool_calls or []
                assert not choice.delta.content  # the calls never leak as text
                finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    starts = [p for p in parts if p.id]
    assert [(p.index, p.function.name) for p in starts] == [(0, "get_weather"), (1, "get_time")]
    assert len(parts) > len(starts)  # arguments arrive in pieces
    for position in (0, 1):
        arguments = "".join(p.function.arguments or "" for p in parts if p.index == position)
        assert json.loads(arguments) == PARIS


def test_parallel_calls_off_gives_one_call(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=FEW_SHOT, tools=TOOLS, max_tokens=100,
                                           parallel_tool_calls=False)
    # xllamacpp 2026.10 lets the model make more calls anyway; lokal passes on the first only.
    assert _calls(reply.choices[0].message.tool_calls) == [("get_weather", PARIS)]
    assert reply.choices[0].finish_reason == "tool_calls"
