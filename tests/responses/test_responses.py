"""OpenAI's Responses API against a real server: the openai SDK (create, streaming
events, responses.stream, tools round trip, json_schema), raw SSE shape checks,
gzip/zstd bodies, the stateless refusals, and the engine's own /v1/responses as a
reference for the event order. SmolLM2's answers are nonsense: shapes and round
trips are checked, never content."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.conftest import LokalServer, smol_server

MODEL = "smol"
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LokalServer]:
    with smol_server(tmp_path_factory, "responses", "--parallel-requests", "2",
                     "--model-aliases", '{"gpt-5*": "smol"}', "--upload-limit", "1") as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: LokalServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def http(server: LokalServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base, timeout=120) as c:
        yield c


def sse_events(response: httpx.Response) -> list[tuple[str, dict]]:
    events, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[6:])))
    return events


def test_create_whole(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="Say hello.", instructions="Be brief.",
                                       max_output_tokens=200, store=False, metadata={"k": "v"})
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "completed"
    assert response.output[0].type == "message" and response.output[0].content[0].type == "output_text"
    assert response.output_text
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert response.usage.input_tokens_details.cached_tokens >= 0
    assert response.metadata == {"k": "v"} and response.instructions == "Be brief."


def test_cut_is_incomplete_and_alias(client: openai.OpenAI) -> None:
    response = client.responses.create(model="gpt-5-codex", input="Tell me a long story.",
                                       max_output_tokens=3)
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 3
    assert response.model == "gpt-5-codex"


def test_stream_events_order(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model=MODEL, input="Say hello.", max_output_tokens=6,
                                          stream=True))
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.incomplete"]
    assert "response.output_text.delta" in types
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert events[-1].response.output[0].content[0].text == text
    assert events[-1].response.usage.output_tokens == 6


def test_responses_stream_helper(client: openai.OpenAI) -> None:
    with client.responses.stream(model=MODEL, input="Say hello.", max_output_tokens=300) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.status == "completed"
    assert final.output_text == "".join(deltas)


def test_tools_round_trip(client: openai.OpenAI) -> None:
    first = client.responses.create(model=MODEL, input="What is the weather in Paris?", tools=[WEATHER],
                                    tool_choice={"type": "function", "name": "get_weather"},
                                    max_output_tokens=60)
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].call_id
    assert isinstance(json.loads(calls[0].arguments), dict)
    history = [{"role": "user", "content": "What is the weather in Paris?"},
               {"type": "function_call", "call_id": calls[0].call_id, "name": "get_weather",
                "arguments": calls[0].arguments},
               {"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny, 21 C"}]
    second = client.responses.create(model=MODEL, input=history, tools=[WEATHER], tool_choice="none",
                                     max_output_tokens=40)
    assert second.output[0].type == "message" and second.status in ("completed", "incomplete")


def test_streamed_tool_call(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model=MODEL, input="Weather in Oslo?", tools=[WEATHER],
                                          tool_choice="required", max_output_tokens=60, stream=True))
    types = [e.type for e in events]
    added = next(e for e in events if e.type == "response.output_item.added")
    assert added.item.type == "function_call" and added.item.name == "get_weather" and added.item.call_id
    assert "response.function_call_arguments.delta" in types
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert done.arguments == deltas and isinstance(json.loads(deltas), dict)
    assert types[-1] == "response.completed"
    assert events[-1].response.output[0].call_id == added.item.call_id


def test_json_schema(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    response = client.responses.create(model=MODEL, input="Invent a person.", max_output_tokens=80,
                                       text={"format": {"type": "json_schema", "name": "person",
                                                        "schema": schema, "strict": True}})
    value = json.loads(response.output_text)
    assert set(value) == {"name", "age"} and isinstance(value["age"], int)
    response = client.responses.create(model=MODEL, input="Reply in JSON.", max_output_tokens=60,
                                       text={"format": {"type": "json_object"}})
    assert response.status == "incomplete" or isinstance(json.loads(response.output_text), dict)


def test_input_tokens(http: httpx.Client) -> None:
    small = http.post("/v1/responses/input_tokens", json={"model": MODEL, "input": "hi"}).json()
    big = http.post("/v1/responses/input_tokens", json={"model": MODEL, "input": "hi " * 50}).json()
    assert small["object"] == "response.input_tokens"
    assert 0 < small["input_tokens"] < big["input_tokens"]
    whole = http.post("/v1/responses", json={"model": MODEL, "input": "hi", "max_output_tokens": 1}).json()
    assert whole["usage"]["input_tokens"] == small["input_tokens"]


@pytest.mark.parametrize("body, param", [
    ({"previous_response_id": "resp_1"}, "previous_response_id"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input"),
    ({"tools": [{"type": "computer_use_preview"}]}, "tools"),  # hosted ones (web_search) are left out
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input"),
])
def test_stateless_and_unsupported_are_400(client: openai.OpenAI, body: dict, param: str) -> None:
    kwargs = {"model": MODEL, "input": "hi", **body}
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(**kwargs)
    assert info.value.status_code == 400
    assert info.value.body["param"] == param or param in info.value.body["message"]


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="claude-3-haiku", input="hi")  # not aliased on this server
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_123")


def test_compressed_bodies(http: httpx.Client) -> None:
    body = json.dumps({"model": MODEL, "input": "Say hi", "max_output_tokens": 2}).encode()
    import zstandard

    for encoding, data in (("gzip", gzip.compress(body)), ("zstd", zstandard.compress(body))):
        answer = http.post("/v1/responses", content=data, headers={"Content-Encoding": encoding,
                                                                   "Content-Type": "application/json"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["output_tokens"] == 2
    bomb = gzip.compress(json.dumps({"model": MODEL, "input": "x" * (2 << 20)}).encode())
    assert len(bomb) < 1 << 20  # small on the wire, over the 1 MB limit decompressed
    answer = http.post("/v1/responses", content=bomb, headers={"Content-Encoding": "gzip"})
    assert answer.status_code == 413 and "decompressed" in answer.json()["error"]["message"]
    answer = http.post("/v1/responses", content=b"not gzip", headers={"Content-Encoding": "gzip"})
    assert answer.status_code == 400
    answer = http.post("/v1/responses", content=body, headers={"Content-Encoding": "br"})
    assert answer.status_code == 415


def test_same_event_order_as_the_engine(server: LokalServer, http: httpx.Client) -> None:
    """The engine's own /v1/responses, on its loopback port, is the reference."""
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
    body = {"model": MODEL, "input": "Say hello.", "max_output_tokens": 5, "stream": True}
    try:
        with httpx.Client(base_url=engine.listening_address, timeout=120,
                          headers={"Connection": "close"}) as ref:
            with ref.stream("POST", "/v1/responses", json=body) as answer:
                reference = [name for name, _ in sse_events(answer)]
    finally:
        del engine
    with http.stream("POST", "/v1/responses", json=body) as answer:
        ours = [name for name, _ in sse_events(answer)]

    def squash(names: list[str]) -> list[str]:  # runs of deltas as one
        return [n for i, n in enumerate(names) if not (n.endswith(".delta") and i and names[i - 1] == n)]

    # The engine ends a cut response with response.completed; OpenAI (and lokal) say incomplete.
    assert squash(ours)[:-1] == squash(reference)[:-1]
    assert ours[-1] == "response.incomplete" and reference[-1] == "response.completed"


def test_openai_agents_sdk_runs_an_agent_with_a_tool(server: LokalServer) -> None:
    """openai-agents on the Responses API. It needs openai>=3 from 0.21 on; with the
    suite's openai 2.x, openai-agents 0.20.x (openai>=2.45,<3) is the one that fits."""
    agents = pytest.importorskip("agents")
    import asyncio

    calls: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """Weather in a city."""
        calls.append(city)
        return "Sunny, 21 C"

    agents.set_tracing_disabled(True)  # no traces sent anywhere
    model = agents.OpenAIResponsesModel(model=MODEL, openai_client=openai.AsyncOpenAI(
        base_url=f"{server.base}/v1", api_key="unused", max_retries=0))
    agent = agents.Agent(name="weather", instructions="Answer with the weather tool.", tools=[get_weather],
                         model=model, tool_use_behavior="stop_on_first_tool",
                         model_settings=agents.ModelSettings(tool_choice="required", max_tokens=80))
    result = asyncio.run(agents.Runner.run(agent, "What is the weather in Paris?", max_turns=3))
    assert len(calls) == 1 and result.final_output == "Sunny, 21 C"


def test_langchain_chat_openai_on_responses(server: LokalServer) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    llm = langchain_openai.ChatOpenAI(model=MODEL, base_url=f"{server.base}/v1", api_key="unused",
                                      use_responses_api=True, max_tokens=300, max_retries=0)
    answer = llm.invoke("Say hello.")
    assert answer.text and answer.usage_metadata["input_tokens"] > 0
    chunks = list(llm.stream("Say hello."))
    assert "".join(c.text for c in chunks)

    def get_weather(city: str) -> str:
        """Weather in a city."""
        return "Sunny"

    call = llm.bind_tools([get_weather], tool_choice="get_weather").invoke("Weather in Paris?")
    assert call.tool_calls and call.tool_calls[0]["name"] == "get_weather"
    assert isinstance(call.tool_calls[0]["args"], dict) and call.tool_calls[0]["id"]


def test_error_after_the_first_token_is_reported_in_stream(http: httpx.Client) -> None:
    # the prompt cached first, so the first token comes well within the timeout
    http.post("/v1/responses", json={"model": MODEL, "input": "Tell a story.", "max_output_tokens": 1})
    body = {"model": MODEL, "input": "Tell a story.", "max_output_tokens": 100000, "stream": True,
            "ignore_eos": True, "timeout": 3}
    with http.stream("POST", "/v1/responses", json=body) as answer:
        assert answer.status_code == 200
        events = sse_events(answer)
    names = [n for n, _ in events]
    assert "response.output_text.delta" in names
    assert names[-2:] == ["error", "response.failed"]
    assert events[-2][1]["code"] == "timeout_error" and events[-2][1]["message"]
    failed = events[-1][1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "timeout_error"
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    # the server keeps serving
    assert http.post("/v1/responses", json={"model": MODEL, "input": "hi", "max_output_tokens": 1}).status_code == 200
