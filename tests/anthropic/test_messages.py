"""Anthropic's Messages API against a real server, through the anthropic SDK:
create, stream (text_stream, final message), a tool-use round trip, stop
sequences, count_tokens, typed errors, the billing line and the prompt cache,
and the engine's own /v1/messages as a reference for the event order."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import anthropic
import httpx
import pytest

from tests.conftest import LokalServer, smol_server
from tests.fast.test_vision import png

MODEL = "smol"
WEATHER = {"name": "get_weather", "description": "Weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                            "required": ["city"]}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LokalServer]:
    with smol_server(tmp_path_factory, "anthropic", "--parallel-requests", "1",
                     "--model-aliases", '{"claude-*": "smol"}', "--api-key", "sk-test") as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: LokalServer) -> anthropic.Anthropic:
    # The SDK sends the key as x-api-key, and anthropic-version on every request.
    return anthropic.Anthropic(base_url=server.base, api_key="sk-test", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def http(server: LokalServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base, timeout=120, headers={"x-api-key": "sk-test"}) as c:
        yield c


def test_create(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model="claude-code-default", max_tokens=200, system="Be brief.",
                                     messages=[{"role": "user", "content": "Say hello."}],
                                     metadata={"user_id": "u1"},
                                     # this SDK version dropped the sampling arguments; the API has them
                                     extra_body={"temperature": 0.5, "top_p": 0.9, "top_k": 40},
                                     extra_headers={"anthropic-beta": "prompt-caching-2024-07-31"})
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert message.model == "claude-code-default"
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0) > 0
    assert message.usage.output_tokens > 0


def test_max_tokens_and_blocks(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model=MODEL, max_tokens=3, system=[{"type": "text", "text": "You are terse."}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "Tell a long story."}]}],
        thinking={"type": "enabled", "budget_tokens": 1024})
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 3


def test_stream(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model=MODEL, max_tokens=300,
                                messages=[{"role": "user", "content": "Say hello."}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0 and final.usage.input_tokens > 0


def test_raw_stream_events(http: httpx.Client) -> None:
    body = {"model": MODEL, "max_tokens": 5, "stream": True,
            "messages": [{"role": "user", "content": "Say hello."}]}
    with http.stream("POST", "/v1/messages?beta=true", json=body,
                     headers={"anthropic-version": "2023-06-01"}) as answer:
        events = _events(answer)
    names = [n for n, _ in events]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    for name, data in events:
        assert data["type"] == name
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 5


def test_tool_use_round_trip(client: anthropic.Anthropic) -> None:
    question = {"role": "user", "content": "What is the weather in Paris?"}
    first = client.messages.create(model=MODEL, max_tokens=80, tools=[WEATHER],
                                   tool_choice={"type": "tool", "name": "get_weather"}, messages=[question])
    assert first.stop_reason == "tool_use"
    use = next(b for b in first.content if b.type == "tool_use")
    assert use.name == "get_weather" and use.id.startswith("toolu_") and isinstance(use.input, dict)
    second = client.messages.create(model=MODEL, max_tokens=40, tools=[WEATHER], tool_choice={"type": "none"},
                                    messages=[question, {"role": "assistant", "content": first.content},
                                              {"role": "user", "content": [
                                                  {"type": "tool_result", "tool_use_id": use.id,
                                                   "content": "Sunny, 21 C"}]}])
    assert second.content and second.content[0].type == "text"
    assert second.stop_reason in ("end_turn", "max_tokens")


def test_streamed_tool_use(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model=MODEL, max_tokens=80, tools=[WEATHER], tool_choice={"type": "any"},
                                messages=[{"role": "user", "content": "Weather in Oslo?"}]) as stream:
        partial = "".join(e.partial_json for e in stream if e.type == "input_json")
        final = stream.get_final_message()
    use = final.content[0]
    assert use.type == "tool_use" and use.name == "get_weather"
    assert use.input == json.loads(partial)
    assert final.stop_reason == "tool_use"


def test_stop_sequence(client: anthropic.Anthropic) -> None:
    free = client.messages.create(model=MODEL, max_tokens=40,
                                  messages=[{"role": "user", "content": "Describe the sea."}])
    words = free.content[0].text.split()
    stop = words[min(3, len(words) - 1)]  # a word the (deterministic) answer contains
    cut = client.messages.create(model=MODEL, max_tokens=40, stop_sequences=["\u2603", stop],
                                 messages=[{"role": "user", "content": "Describe the sea."}])
    assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == stop
    assert stop not in cut.content[0].text
    assert free.content[0].text.startswith(cut.content[0].text)
    assert cut.usage.output_tokens > 0 and cut.usage.input_tokens > 0
    with client.messages.stream(model=MODEL, max_tokens=40, stop_sequences=[stop],
                                messages=[{"role": "user", "content": "Describe the sea."}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == stop
    assert text == cut.content[0].text


def test_count_tokens(client: anthropic.Anthropic) -> None:
    small = client.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    tools = client.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                         tools=[WEATHER], system="You are terse.")
    assert 0 < small.input_tokens < tools.input_tokens
    message = client.messages.create(model=MODEL, max_tokens=1, messages=[{"role": "user", "content": "hi"}])
    usage = message.usage
    assert usage.input_tokens + (usage.cache_read_input_tokens or 0) == small.input_tokens


def test_typed_errors(client: anthropic.Anthropic, server: LokalServer) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.create(model="gpt-4o", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert info.value.body["type"] == "error" and info.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as info:
        # The SDK checks its own arguments: send the body without max_tokens through it raw.
        client.post("/v1/messages", cast_to=httpx.Response,
                    body={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert "max_tokens" in info.value.body["error"]["message"]
    assert info.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": base64.b64encode(png()).decode()}}]}])
    assert f"'{MODEL}' does not take images" in info.value.body["error"]["message"]
    bad_key = anthropic.Anthropic(base_url=server.base, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as info:
        bad_key.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert info.value.body["error"]["type"] == "authentication_error"
    # Authorization: Bearer works as well as x-api-key.
    bearer = httpx.post(f"{server.base}/v1/messages/count_tokens", headers={"Authorization": "Bearer sk-test"},
                        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert bearer.status_code == 200


def test_billing_line_is_dropped_so_the_cache_serves_turn_two(client: anthropic.Anthropic) -> None:
    long_system = "You are a careful assistant. " * 40
    usages = []
    for cch in ("36ee5", "0aaa9"):
        billing = f"x-anthropic-billing-header: cc_version=2.1.177.01c; cc_entrypoint=cli; cch={cch};"
        message = client.messages.create(
            model="claude-opus-4", max_tokens=1,
            system=[{"type": "text", "text": billing}, {"type": "text", "text": long_system}],
            messages=[{"role": "user", "content": "hi"}])
        usages.append(message.usage)
    assert usages[1].cache_read_input_tokens > 200


def test_billing_line_counts(client: anthropic.Anthropic) -> None:
    billing = "x-anthropic-billing-header: cc_version=2.1.177.01c; cc_entrypoint=cli; cch=36ee5;"
    plain = client.messages.count_tokens(model=MODEL, system="Hi.", messages=[{"role": "user", "content": "x"}])
    with_line = client.messages.count_tokens(model=MODEL, system=billing + "\nHi.",
                                             messages=[{"role": "user", "content": "x"}])
    assert plain.input_tokens == with_line.input_tokens


def test_same_event_order_as_the_engine(server: LokalServer, http: httpx.Client) -> None:
    xllamacpp = pytest.importorskip("xllamacpp")
    params = xllamacpp.CommonParams()
    params.model.path = str(server.models / "smol.gguf")
    params.n_parallel = 1
    params.n_ctx = 1024
    params.use_jinja = True
    params.cpuparams.n_threads = 1
    params.cpuparams_batch.n_threads = 1
    params.n_threads_http = 1
    engine = xllamacpp.Server(params)
    body = {"model": MODEL, "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": "Hi."}]}
    try:
        with httpx.Client(base_url=engine.listening_address, timeout=120,
                          headers={"Connection": "close"}) as ref:
            with ref.stream("POST", "/v1/messages", json=body) as answer:
                reference = [n for n, _ in _events(answer)]
    finally:
        del engine
    with http.stream("POST", "/v1/messages", json=body) as answer:
        ours = [n for n, _ in _events(answer)]

    def squash(names: list[str]) -> list[str]:  # runs of deltas as one; pings may come anywhere
        names = [n for n in names if n != "ping"]
        return [n for i, n in enumerate(names) if not (n == "content_block_delta" and names[i - 1] == n)]

    assert squash(ours) == squash(reference)


def _events(answer: httpx.Response) -> list[tuple[str, dict]]:
    events, name = [], None
    for line in answer.iter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[6:])))
    return events


def test_error_after_the_first_token_is_an_error_event(http: httpx.Client) -> None:
    # the prompt cached first, so the first token comes well within the timeout
    http.post("/v1/messages", json={"model": MODEL, "max_tokens": 1,
                                    "messages": [{"role": "user", "content": "Tell a story."}]})
    body = {"model": MODEL, "max_tokens": 100000, "stream": True, "ignore_eos": True, "timeout": 3,
            "messages": [{"role": "user", "content": "Tell a story."}]}
    with http.stream("POST", "/v1/messages", json=body) as answer:
        assert answer.status_code == 200
        events = _events(answer)
    assert "content_block_delta" in [n for n, _ in events]
    name, data = events[-1]
    assert name == "error" and data["type"] == "error" and data["error"]["type"] == "timeout_error"
    ok = http.post("/v1/messages", json={"model": MODEL, "max_tokens": 1,
                                         "messages": [{"role": "user", "content": "hi"}]})
    assert ok.status_code == 200
