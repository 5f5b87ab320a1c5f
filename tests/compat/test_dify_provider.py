"""Dify's LocalAI model provider, replayed request by request against a real lokal.

Each test sends what the provider sends (URL forms, headers, bodies) and checks
exactly the fields it reads. See docs/dify.md for the user's side.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.api.test_transcriptions import SENTENCE, encode, place_whisper, speak
from tests.conftest import LokalServer, place_folder, place_model

CHAT = "gpt-3.5-turbo"
EMBED = "text-embedding-ada-002"
WEATHER = {"name": "get_weather", "description": "Get the current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture(scope="module")
def dify(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LokalServer]:
    models = tmp_path_factory.mktemp("dify") / "models"
    place_model(models, "smollm2.gguf")
    place_folder(models, "all-MiniLM-L6-v2")
    (models / "gpt-3.5-turbo.yaml").write_text(f"name: {CHAT}\nparameters:\n  model: smollm2.gguf\n"
                                               "context_size: 2048\n")
    (models / "embeddings.yaml").write_text(f"name: {EMBED}\nparameters:\n  model: all-MiniLM-L6-v2\n"
                                            "embeddings: true\n")
    place_whisper(models, "whisper-tiny")
    (models / "whisper.yaml").write_text("name: whisper-1\nbackend: whisper\nparameters:\n  model: whisper-tiny\n")
    with LokalServer(models, "--preload-models", f"{CHAT},{EMBED}") as server:
        server.wait_ready(120)
        yield server


def server_urls(server: LokalServer) -> list[str]:
    """The three ways a user types the server URL into Dify."""
    return [server.base, server.base + "/", server.base + "/v1"]


def llm_client(server_url: str) -> openai.OpenAI:
    # The provider: base_url = server_url joined with "v1", api key "1".
    return openai.OpenAI(base_url=server_url.rstrip("/") + "/v1", api_key="1", max_retries=0, timeout=60)


@pytest.mark.parametrize("form", [0, 1, 2])
def test_llm_validation_ping(dify: LokalServer, form: int) -> None:
    client = llm_client(server_urls(dify)[form])
    reply = client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "ping"}],
                                           max_tokens=10)
    assert reply.choices[0].index == 0
    assert isinstance(reply.choices[0].message.content, str)


def test_chat_stream_with_accept_json(dify: LokalServer) -> None:
    body = {"model": CHAT, "messages": [{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "Say hello"}],
            "stream": True, "temperature": 0.7, "top_p": 1, "max_tokens": 2048, "stop": ["Human:"],
            "user": "dify-user"}
    with httpx.stream("POST", f"{dify.base}/v1/chat/completions", json=body, timeout=120,
                      headers={"Accept": "application/json", "Authorization": "Bearer 1"}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    assert all(c["choices"][0]["index"] == 0 for c in chunks)
    assert all("content" not in c["choices"][0]["delta"] or isinstance(c["choices"][0]["delta"]["content"], str)
               for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_completion_mode_joined_messages(dify: LokalServer) -> None:
    client = llm_client(dify.base)
    prompt = "You are a helpful assistant.\nWhat is 2 + 2?"
    reply = client.completions.create(model=CHAT, prompt=prompt, max_tokens=16, temperature=0.1)
    assert isinstance(reply.choices[0].text, str)
    stream = client.completions.create(model=CHAT, prompt=prompt, max_tokens=8, stream=True)
    chunks = list(stream)
    assert all(isinstance(c.choices[0].text, str) for c in chunks)  # a null text crashes Dify
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_functions_give_a_function_call(dify: LokalServer) -> None:
    client = llm_client(dify.base)
    reply = client.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        functions=[WEATHER], max_tokens=60, temperature=0)
    choice = reply.choices[0]
    if choice.finish_reason == "function_call":
        assert choice.message.function_call.name == "get_weather"
        assert isinstance(json.loads(choice.message.function_call.arguments), dict)
    else:  # the model chose to answer: still a plain, non-empty answer
        assert choice.finish_reason == "stop" and choice.message.content


def test_forced_function_and_tools(dify: LokalServer) -> None:
    client = llm_client(dify.base)
    reply = client.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "Weather in Rome?"}], functions=[WEATHER],
        function_call={"name": "get_weather"}, max_tokens=60, temperature=0)
    assert reply.choices[0].finish_reason == "function_call"
    assert "city" in json.loads(reply.choices[0].message.function_call.arguments)
    reply = client.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "Weather in Rome?"}],
        tools=[{"type": "function", "function": WEATHER}], tool_choice="required", max_tokens=60, temperature=0)
    assert reply.choices[0].finish_reason == "tool_calls"
    call = reply.choices[0].message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id


def test_function_call_stream(dify: LokalServer) -> None:
    client = llm_client(dify.base)
    chunks = list(client.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "Weather in Oslo?"}], functions=[WEATHER],
        function_call={"name": "get_weather"}, max_tokens=60, temperature=0, stream=True))
    calls = [c.choices[0].delta.function_call for c in chunks if c.choices and c.choices[0].delta.function_call]
    assert calls and calls[0].name == "get_weather"
    assert chunks[-1].choices[0].finish_reason == "function_call"


def test_tool_results_as_dify_sends_them(dify: LokalServer) -> None:
    # After a call, Dify sends the assistant's function_call and the result as tool_result parts.
    body = {"model": CHAT, "max_tokens": 40, "functions": [WEATHER], "messages": [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": "", "function_call": {"name": "get_weather",
                                                               "arguments": "{\"city\": \"Paris\"}"}},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "get_weather",
                                      "content": "Sunny, 21 C"}]}]}
    r = httpx.post(f"{dify.base}/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] in ("stop", "function_call", "length")
    assert choice["message"].get("content") or choice["message"].get("function_call")


@pytest.mark.parametrize("form", [0, 1, 2])
def test_embeddings_as_the_provider_sends_them(dify: LokalServer, form: int) -> None:
    url = server_urls(dify)[form].rstrip("/") + "/embeddings"
    r = httpx.post(url, headers={"Authorization": "Bearer 123", "Content-Type": "application/json"},
                   json={"model": EMBED, "input": "hello world"}, timeout=10)
    assert r.status_code == 200
    data = r.json()
    assert data["usage"]["total_tokens"] > 0
    assert len(data["data"][0]["embedding"]) == 384


def test_embedding_errors_carry_an_integer_code(dify: LokalServer) -> None:
    r = httpx.post(f"{dify.base}/embeddings", headers={"Authorization": "Bearer 123"},
                   json={"model": "missing", "input": "x"}, timeout=10)
    error = r.json()["error"]
    assert isinstance(error["code"], int) and error["code"] == r.status_code == 404
    assert error["message"]


@pytest.mark.parametrize("form", [0, 1, 2])
def test_rerank_validation_with_top_n_null(dify: LokalServer, form: int) -> None:
    url = server_urls(dify)[form].rstrip("/") + "/rerank"
    docs = ["Paris is the capital of France.", "Bananas are yellow.", "France's capital city is Paris."]
    r = httpx.post(url, headers={"Authorization": "Bearer None"},
                   json={"model": EMBED, "query": "What is the capital of France?", "documents": docs,
                         "top_n": None}, timeout=30)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 3
    scores = [item["relevance_score"] for item in results]
    assert scores == sorted(scores, reverse=True)
    assert results[-1]["index"] == 1  # bananas last
    # No `document` unless asked for: Dify takes docs[index] then (its Ollama provider
    # would fail on the object).
    assert all("document" not in item for item in results)


def test_rerank_top_n_and_document_objects(dify: LokalServer) -> None:
    r = httpx.post(f"{dify.base}/v1/rerank", json={
        "model": EMBED, "query": "fruit", "documents": [{"text": "apple"}, {"text": "car"}, {"text": "pear"}],
        "top_n": 2, "return_documents": False}, timeout=30)
    results = r.json()["results"]
    assert [item["index"] for item in results][:2] and len(results) == 2
    assert "document" not in results[0]
    assert r.json()["usage"]["total_tokens"] > 0


@pytest.mark.parametrize("body", [
    {"query": "q", "documents": ["a"], "top_n": 0},
    {"query": "q", "documents": ["a"], "top_n": -1},
    {"query": "q", "documents": ["a"] * 1001},
    {"query": "q", "documents": []},
    {"query": "", "documents": ["a"]},
])
def test_rerank_bad_requests(dify: LokalServer, body: dict) -> None:
    r = httpx.post(f"{dify.base}/v1/rerank", json={"model": EMBED, **body}, timeout=30)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == 400


def test_rerank_on_a_chat_only_model_is_400(dify: LokalServer) -> None:
    r = httpx.post(f"{dify.base}/v1/rerank", json={"model": CHAT, "query": "q", "documents": ["a"]}, timeout=30)
    assert r.status_code == 400
    assert "embeddings: true" in r.json()["error"]["message"]


@pytest.mark.parametrize("form", [0, 1, 2])
def test_speech_to_text_validation_upload(dify: LokalServer, form: int, tmp_path) -> None:  # noqa: ANN001
    # The provider posts multipart {model, file} to server_url + /v1/audio/transcriptions
    # (an MP3 when validating) and reads {"text"}, failing on any "error" key.
    mp3 = encode(speak(SENTENCE, tmp_path / "speech.wav"), "mp3")
    url = server_urls(dify)[form].rstrip("/") + "/v1/audio/transcriptions"
    with mp3.open("rb") as audio:
        r = httpx.post(url, data={"model": "whisper-1"}, files={"file": ("validate.mp3", audio, "audio/mpeg")},
                       timeout=120)
    assert r.status_code == 200
    body = r.json()
    assert "error" not in body
    assert "fox" in body["text"].lower()
