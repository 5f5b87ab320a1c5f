"""The rest of the text surface on the fake engine: LocalAI's /v1/tokenize, llama-server's
/tokenize, /detokenize, /apply-template, /props, /slots (admin) and /infill, and
fill-in-the-middle through Ollama's `suffix` and OpenAI's completions `suffix`."""

from __future__ import annotations

import json

from lokal.engines.fake import words
from tests.fakeengine import sse_events

USER = {"Authorization": "Bearer user-key"}
ADMIN = {"Authorization": "Bearer admin-key"}


def test_tokenize_detokenize_and_apply_template(fake_server) -> None:
    server = fake_server("ok", config="system_prompt: Be brief.\n")
    with server.client() as client:
        ids = client.post("/tokenize", json={"content": "hello big world"}).json()["tokens"]
        assert len(ids) == 3 and all(isinstance(i, int) for i in ids)
        pieces = client.post("/tokenize", json={"model": "fake", "content": "hello world",
                                                "with_pieces": True}).json()["tokens"]
        assert [p["piece"] for p in pieces] == ["hello", "world"] and pieces[0]["id"] == ids[0]
        assert client.post("/v1/tokenize", json={"model": "fake", "content": "hello big world"}).json() == {
            "tokens": ids}
        text = client.post("/detokenize", json={"tokens": ids}).json()["content"]
        assert text.count("<") == 3
        # The prompt lokal would send: the config's system prompt goes first.
        prompt = client.post("/apply-template", json={"messages": [{"role": "user", "content": "Hi"}]}).json()
        assert prompt == {"prompt": "system: Be brief.\nuser: Hi\nassistant:"}
        assert client.post("/v1/tokenize", json={"model": "nope", "content": "x"}).status_code == 404


def test_model_is_required_when_there_is_a_choice(fake_server) -> None:
    server = fake_server("ok", files={"other.gguf": None, "other.yaml": "name: other\nparameters:\n  model: other.gguf\n"})
    with server.client() as client:
        r = client.post("/tokenize", json={"content": "x"})
        assert r.status_code == 400 and "fake, other" in r.json()["error"]["message"]
        assert client.post("/tokenize", json={"model": "other", "content": "x"}).status_code == 200


def test_props_are_open_slots_are_admin(fake_server) -> None:
    server = fake_server("ok", api_key="user-key", admin_api_key="admin-key")
    with server.client() as client:
        props = client.get("/props", headers=USER)
        assert props.status_code == 200, props.text
        assert props.json()["model_path"] == "fake.gguf" and props.json()["total_slots"] >= 1
        assert client.get("/slots", headers=USER).status_code == 401
        slots = client.get("/slots", params={"model": "fake"}, headers=ADMIN)
        assert slots.status_code == 200 and slots.json()[0]["id"] == 0


def test_infill_whole_and_streamed(fake_server) -> None:
    server = fake_server([words("return a + b", finish="stop")])
    body = {"input_prefix": "def add(a, b):\n    ", "input_suffix": "\n\nprint(add(1, 2))\n",
            "input_extra": [{"filename": "util.py", "text": "X = 1\n"}], "n_predict": 16}
    with server.client() as client:
        r = client.post("/infill", json=body)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["content"] == "return a + b" and answer["stop"] is True
        assert answer["tokens_predicted"] == 4 and answer["stop_type"] == "eos"
        call = server.last
        assert call.mode == "infill" and call.body["input_prefix"] == body["input_prefix"]
        assert call.body["input_suffix"] == body["input_suffix"] and call.body["input_extra"] == body["input_extra"]
        assert call.body["max_tokens"] == 16
        r = client.post("/infill", json=dict(body, stream=True))
        events = [e for e in sse_events(r.text)]
        assert "".join(e["content"] for e in events if not e["stop"]) == "return a + b"
        assert events[-1]["stop"] is True and events[-1]["tokens_predicted"] == 4


def test_suffix_fills_in_the_middle_on_ollama_and_openai(fake_server) -> None:
    server = fake_server([words("a + b")])
    with server.client() as client:
        r = client.post("/api/generate", json={"model": "fake", "prompt": "def add(a, b):\n    return ",
                                               "suffix": "\n", "stream": False})
        assert r.status_code == 200 and r.json()["response"] == "a + b", r.text
        assert server.last.mode == "infill" and server.last.body["input_suffix"] == "\n"
        r = client.post("/v1/completions", json={"model": "fake", "prompt": "x = ", "suffix": ";"})
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == "a + b", r.text
        assert server.last.mode == "infill" and server.last.body["input_prefix"] == "x = "
        r = client.post("/v1/completions", json={"model": "fake", "prompt": ["a", "b"], "suffix": ";"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
        # Streamed on Ollama: NDJSON as any generate.
        r = client.post("/api/generate", json={"model": "fake", "prompt": "x = ", "suffix": ";"})
        lines = [json.loads(line) for line in r.text.splitlines()]
        assert "".join(line.get("response", "") for line in lines) == "a + b" and lines[-1]["done"]
