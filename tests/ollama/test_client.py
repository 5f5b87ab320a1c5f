"""The official `ollama` Python client against lokal's /api, on the Ollama-port listener."""

from __future__ import annotations

import json

import httpx
import ollama
import pytest
from pydantic import BaseModel

from tests.fast.test_vision import png
from tests.ollama.conftest import AUTH, CHAT, EMBED, Ollama

GREEDY = {"temperature": 0, "seed": 7}


def test_probe_root_and_version(ollama_server: Ollama) -> None:
    for base in (ollama_server.base, ollama_server.ollama):
        got = httpx.get(base + "/", headers=AUTH)
        assert got.status_code == 200 and "Ollama is running" in got.text
        assert httpx.head(base + "/", headers=AUTH).status_code == 200
    version = httpx.get(ollama_server.ollama + "/api/version", headers=AUTH).json()["version"]
    assert all(part.isdigit() for part in version.split("."))


def test_list(client: ollama.Client) -> None:
    models = {m.model: m for m in client.list().models}
    assert set(models) >= {f"{CHAT}:latest", f"{EMBED}:latest"}
    chat = models[f"{CHAT}:latest"]
    assert chat.details.format == "gguf" and chat.details.family == "llama"
    assert chat.details.parameter_size == "135M" and chat.details.quantization_level == "Q4_1"
    assert chat.size > 90_000_000 and len(chat.digest) == 64 and chat.modified_at is not None
    assert models[f"{EMBED}:latest"].details.format == "safetensors"
    # The digest is stable from one listing to the next.
    assert client.list().models[0].digest == client.list().models[0].digest


def test_show(client: ollama.Client) -> None:
    for name in (CHAT, f"{CHAT}:latest"):
        shown = client.show(name)
        assert shown.capabilities == ["completion", "tools"]
        assert shown.modelinfo["general.architecture"] == "llama"
        assert shown.modelinfo["llama.context_length"] == 8192
        assert "{% for message in messages %}" in shown.template
    embed = client.show(EMBED)
    assert embed.capabilities == ["embedding"]
    assert embed.modelinfo["bert.embedding_length"] == 384
    assert embed.details.parameter_size == "22.71M"


def test_chat(client: ollama.Client) -> None:
    answer = client.chat(CHAT, messages=[{"role": "user", "content": "Say hello."}],
                         options={"num_predict": 12, **GREEDY})
    assert answer.done and answer.done_reason in ("stop", "length")
    assert answer.message.role == "assistant" and answer.message.content.strip()
    assert 0 < answer.eval_count <= 12 and answer.prompt_eval_count > 0
    assert answer.total_duration >= answer.prompt_eval_duration + answer.eval_duration > 0
    assert answer.model == CHAT


def test_chat_stream_matches_whole(client: ollama.Client) -> None:
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Name a colour."}]
    whole = client.chat(CHAT, messages=messages, options={"num_predict": 10, **GREEDY})
    parts = list(client.chat(CHAT, messages=messages, options={"num_predict": 10, **GREEDY}, stream=True))
    assert len(parts) > 2 and all(not p.done for p in parts[:-1])
    last = parts[-1]
    assert last.done and last.message.content == "" and last.eval_count == whole.eval_count
    assert "".join(p.message.content for p in parts) == whole.message.content
    assert last.done_reason == whole.done_reason


def test_stop_and_num_predict(client: ollama.Client) -> None:
    answer = client.generate(CHAT, "Count: 1, 2, 3,", raw=True, options={"num_predict": 3, **GREEDY})
    assert answer.done_reason == "length" and answer.eval_count == 3
    stopped = client.generate(CHAT, "Count: 1, 2, 3,", raw=True,
                              options={"num_predict": 30, "stop": [","], **GREEDY})
    assert "," not in stopped.response and stopped.done_reason == "stop"


def test_generate_template_and_system(client: ollama.Client) -> None:
    answer = client.generate(CHAT, "What is 2+2?", system="Answer with a number.",
                             options={"num_predict": 8, **GREEDY})
    assert answer.response.strip() and answer.done
    streamed = list(client.generate(CHAT, "What is 2+2?", system="Answer with a number.",
                                    options={"num_predict": 8, **GREEDY}, stream=True))
    assert "".join(p.response for p in streamed) == answer.response


def get_weather(city: str) -> str:
    """Get the current weather in a city.

    Args:
      city: The name of the city
    """
    return "11 degrees celsius"


def test_tools_round_trip(client: ollama.Client) -> None:
    messages = [{"role": "user", "content": "What is the weather in Paris? Use the tool."}]
    first = client.chat(CHAT, messages=messages, tools=[get_weather], options=GREEDY)
    calls = first.message.tool_calls
    assert calls, first.message
    call = calls[0]
    assert call.function.name == "get_weather" and isinstance(call.function.arguments, dict)
    assert isinstance(call.function.arguments.get("city"), str)
    # Streamed: the same call, whole, with its arguments as an object.
    parts = list(client.chat(CHAT, messages=messages, tools=[get_weather], options=GREEDY, stream=True))
    streamed = [c for p in parts for c in (p.message.tool_calls or [])]
    assert [(c.function.name, c.function.arguments) for c in streamed] == \
        [(c.function.name, c.function.arguments) for c in calls]
    messages.append(first.message)
    messages.append({"role": "tool", "content": get_weather(**call.function.arguments),
                     "tool_name": "get_weather"})
    second = client.chat(CHAT, messages=messages, tools=[get_weather],
                         options={"num_predict": 40, **GREEDY})
    assert second.done and (second.message.content or second.message.tool_calls)


class Person(BaseModel):
    name: str
    age: int


def test_structured_output(client: ollama.Client) -> None:
    answer = client.chat(CHAT, messages=[{"role": "user", "content": "Alice is 30. Reply as JSON."}],
                         format=Person.model_json_schema(), options={"num_predict": 60, **GREEDY})
    person = Person.model_validate_json(answer.message.content)
    assert person.age >= 0
    loose = client.generate(CHAT, "Give a JSON object with a key 'ok'.", format="json",
                            options={"num_predict": 40, **GREEDY})
    assert isinstance(json.loads(loose.response), dict)


def test_embed(client: ollama.Client) -> None:
    result = client.embed(EMBED, ["The sky is blue.", "Grass is green."])
    assert len(result.embeddings) == 2 and len(result.embeddings[0]) == 384
    assert result.prompt_eval_count > 0 and result.total_duration > 0
    one = client.embed(f"{EMBED}:latest", "The sky is blue.", dimensions=8)
    assert len(one.embeddings[0]) == 8
    assert abs(sum(v * v for v in one.embeddings[0]) - 1) < 1e-4
    legacy = client.embeddings(EMBED, "The sky is blue.")
    assert legacy.embedding == pytest.approx(result.embeddings[0], abs=1e-5)


def test_embed_truncate(client: ollama.Client) -> None:
    long_text = "word " * 2000
    assert len(client.embed(EMBED, long_text).embeddings[0]) == 384  # truncated by default
    with pytest.raises(ollama.ResponseError) as info:
        client.embed(EMBED, long_text, truncate=False)
    assert info.value.status_code == 400 and "window" in info.value.error


def test_ps_and_keep_alive(client: ollama.Client) -> None:
    client.chat(CHAT, messages=[{"role": "user", "content": "hi"}], options={"num_predict": 1})
    running = {m.model: m for m in client.ps().models}
    assert running[f"{CHAT}:latest"].context_length == 2048
    assert running[f"{CHAT}:latest"].expires_at is not None
    unloaded = client.chat(CHAT, messages=[], keep_alive=0)
    assert unloaded.done and unloaded.done_reason == "unload"
    assert f"{CHAT}:latest" not in {m.model for m in client.ps().models}
    loaded = client.chat(CHAT, messages=[])
    assert loaded.done_reason == "load"
    assert f"{CHAT}:latest" in {m.model for m in client.ps().models}
    # keep_alive 0 with a request: answered, then unloaded.
    answer = client.generate(CHAT, "hi", keep_alive=0, options={"num_predict": 2})
    assert answer.done
    assert f"{CHAT}:latest" not in {m.model for m in client.ps().models}
    client.generate(CHAT, "")  # load again for the tests that follow


def test_errors_in_ollama_shape(client: ollama.Client, ollama_server: Ollama) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.chat("no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 404 and info.value.error == "model 'no-such-model' not found"
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(CHAT, messages=[{"role": "user", "content": "hi"}], options={"temperature": "hot"})
    assert info.value.status_code == 400 and "temperature" in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(CHAT, messages=[{"role": "user", "content": "what is this?", "images": [png()]}])
    assert info.value.status_code == 400 and f"'{CHAT}' does not take images" in info.value.error
    with pytest.raises(ollama.ResponseError) as info:  # a bad image is named, whatever the model
        client.chat(CHAT, messages=[{"role": "user", "content": "what is this?", "images": [b"\x89PNG"]}])
    assert info.value.status_code == 400 and info.value.error.startswith("messages.0.images.0: ")
    with pytest.raises(ollama.ResponseError) as info:
        client.show("no-such-model")
    assert info.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as info:
        client.embed(CHAT, "hi")
    assert info.value.status_code == 400
    base = ollama_server.ollama
    for body, status in [
        (b'{"model": "gpt-3.5-turbo", "messages": [', 400),  # cut short
        (b'{"model": "gpt-3.5-turbo"}\n{"model": "x"}\n', 400),  # NDJSON-shaped
        (b'["model"]', 400),
        (b"", 400),
        (b'{"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "x"}], "format": 3}', 400),
        (b'{"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "x"}], "keep_alive": "soon"}', 400),
        (b'{"model": "gpt-3.5-turbo", "messages": [{"role": "wizard", "content": "x"}]}', 400),
        (b'{"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "x"}], '
         b'"options": {"stop": "x", "num_ctx": 99}}', 400),
    ]:
        got = httpx.post(base + "/api/chat", content=body, headers=AUTH)
        assert got.status_code == status, (body, got.text)
        error = got.json()
        assert set(error) == {"error"} and isinstance(error["error"], str) and error["error"]
    # Unknown options are ignored, as Ollama does; the server kept serving throughout.
    answer = client.chat(CHAT, messages=[{"role": "user", "content": "hi"}],
                         options={"num_predict": 2, "mirostat_whatever": 1, "num_gpu": 0, "num_ctx": 1024})
    assert answer.done


def test_api_key_applies(ollama_server: Ollama) -> None:
    for path in ("/api/tags", "/api/version"):
        got = httpx.get(ollama_server.ollama + path)
        assert got.status_code == 401 and set(got.json()) == {"error"}
    with pytest.raises(ollama.ResponseError) as info:
        ollama.Client(host=ollama_server.ollama).list()
    assert info.value.status_code == 401
