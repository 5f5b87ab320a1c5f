"""The OpenAI SDK reads lokal's answers on the fake engine: streams, tool calls, typed errors."""

from __future__ import annotations

import json
import threading

import openai
import pytest

from lokal.engines.fake import fail, reply, stall, words
from tests.fakeengine import MODEL


def _sdk(server, key: str = "sk-unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base}/v1", api_key=key, max_retries=0, timeout=10)


def test_sdk_reads_streams_and_usage(fake_server) -> None:
    server = fake_server([reply("Hel", "lo", prompt_tokens=4)])
    client = _sdk(server)
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 6
    text = client.completions.create(model=MODEL, prompt="x", n=2)
    assert [c.text for c in text.choices] == ["Hello", "Hello"]


def test_sdk_reads_tool_calls_streamed_and_whole(fake_server) -> None:
    server = fake_server([words('{"function": "f", "arguments": {"x": 1}}')])
    client = _sdk(server)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    whole = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "go"}], tools=tools)
    call = whole.choices[0].message.tool_calls[0]
    assert call.function.name == "f" and json.loads(call.function.arguments) == {"x": 1}
    with client.chat.completions.stream(model=MODEL, messages=[{"role": "user", "content": "go"}],
                                        tools=tools) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.tool_calls[0].function.name == "f"
    assert final.choices[0].finish_reason == "tool_calls"


def test_sdk_raises_typed_errors(fake_server) -> None:
    gate = threading.Event()

    def script(request):
        if "hold" in request.last_user:
            return [stall(gate), reply("done")]
        return [fail(400, "bad grammar")]

    server = fake_server(script, parallel_requests=1, queue_size=0)
    client = _sdk(server)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert "bad grammar" in str(bad.value)
    holder = threading.Thread(target=client.chat.completions.create,
                              kwargs={"model": MODEL, "messages": [{"role": "user", "content": "hold"}]})
    holder.start()
    server.wait(lambda: server.engines and server.engine.active == 1, what="the held request")
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    gate.set()
    holder.join(5)


def test_api_keys_guard_generation(fake_server) -> None:
    server = fake_server(api_key="k1,k2")
    with pytest.raises(openai.AuthenticationError):
        _sdk(server, "wrong").chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert server.calls == []
    reply_ = _sdk(server, "k2").chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert reply_.choices[0].message.content == "Hello from the fake engine."
