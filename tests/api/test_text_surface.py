"""The text surface on the real engine (SmolLM2): llama-server's /tokenize, /detokenize,
/apply-template, /props, /slots and /infill shapes, LocalAI's /v1/tokenize, and the agents'
recorded first requests over a small context, worded per family from the engine's counts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import LokalServer, smol_server

AGENTS = Path(__file__).resolve().parents[1] / "fixtures" / "agents"


@pytest.fixture(scope="module")
def smol(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LokalServer]:
    with smol_server(tmp_path_factory, "text-surface", "--parallel-requests", "1") as server:
        yield server


@pytest.fixture(scope="module")
def http(smol: LokalServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=smol.base, timeout=300) as client:
        yield client


def test_tokenize_round_trip(http: httpx.Client) -> None:
    ids = http.post("/tokenize", json={"content": "Hello world"}).json()["tokens"]
    assert ids and all(isinstance(i, int) for i in ids)
    assert http.post("/detokenize", json={"tokens": ids}).json()["content"].strip() == "Hello world"
    pieces = http.post("/tokenize", json={"content": "Hello world", "with_pieces": True}).json()["tokens"]
    assert [p["id"] for p in pieces] == ids and "".join(p["piece"] for p in pieces) == "Hello world"
    assert http.post("/v1/tokenize", json={"model": "smol", "content": "Hello world"}).json() == {"tokens": ids}
    special = http.post("/tokenize", json={"content": "<|im_start|>", "parse_special": True}).json()["tokens"]
    assert len(special) == 1


def test_apply_template_props_and_slots(http: httpx.Client) -> None:
    prompt = http.post("/apply-template", json={"messages": [{"role": "user", "content": "Hi"}]}).json()["prompt"]
    assert "<|im_start|>user\nHi<|im_end|>" in prompt and prompt.rstrip().endswith("<|im_start|>assistant")
    props = http.get("/props").json()
    assert props["model_path"] == "smol.gguf" and props["total_slots"] == 1
    assert "im_start" in props["chat_template"]
    slots = http.get("/slots", params={"model": "smol"}).json()  # loopback: an admin
    assert len(slots) == 1 and slots[0]["n_ctx"] == 2048


def test_infill_on_a_model_without_fim_tokens_is_a_clear_400(http: httpx.Client) -> None:
    """SmolLM2's vocabulary has no fill-in-the-middle tokens: the engine says so, and each
    family words it (the streaming path on the fake engine: tests/fast/test_text_surface.py)."""
    body = {"input_prefix": "def add(a, b):\n    return ", "input_suffix": "\n", "n_predict": 6}
    r = http.post("/infill", json=body)
    assert r.status_code == 400 and "cannot fill in the middle" in r.json()["error"]["message"], r.text
    r = http.post("/api/generate", json={"model": "smol", "prompt": body["input_prefix"], "suffix": "\n"})
    assert (r.status_code, r.json()) == (400, {"error": "this model does not support insert (suffix: it has "
                                                        "no fill-in-the-middle tokens)"}), r.text
    r = http.post("/v1/completions", json={"model": "smol", "prompt": "x = ", "suffix": ";"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "suffix", r.text


def test_agents_first_requests_over_the_context_in_their_words(http: httpx.Client) -> None:
    claude = json.loads((AGENTS / "claude-code" / "001.json").read_text())["body"]
    r = http.post("/v1/messages", params={"beta": "true"}, json=dict(claude, model="smol"),
                  headers={"anthropic-beta": "mid-conversation-system-2026-04-07"})
    assert r.status_code == 400, r.text[:300]
    message = r.json()["error"]["message"]
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert message.startswith("prompt is too long: ") and message.endswith(" tokens > 2048 maximum")
    assert int(message.split()[4]) > 2048
    codex = json.loads((AGENTS / "codex" / "001.json").read_text())["body"]
    r = http.post("/v1/responses", json=dict(codex, model="smol"))
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text[:300]


@pytest.fixture(scope="module")
def fim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """SmolLM2 with three of its special tokens named as FIM tokens (tests/fixtures/fim_gguf.py)."""
    from tests.conftest import smollm_gguf
    from tests.fixtures.fim_gguf import write_fim_copy

    models = tmp_path_factory.mktemp("fim") / "models"
    models.mkdir()
    write_fim_copy(smollm_gguf(), models / "fim.gguf", pre=4, suf=5, mid=6)
    (models / "fim.yaml").write_text("name: fim\nparameters:\n  model: fim.gguf\n  temperature: 0\n"
                                     "context_size: 1024\n")
    with LokalServer(models, "--preload-models", "fim", "--parallel-requests", "1") as server:
        server.wait_ready(120)
        with httpx.Client(base_url=server.base, timeout=300) as client:
            yield client


def test_infill_whole_streamed_and_through_the_families(fim: httpx.Client) -> None:
    body = {"input_prefix": "def add(a, b):\n    return ", "input_suffix": "\n\nprint(add(1, 2))\n",
            "input_extra": [{"filename": "util.py", "text": "X = 1\n"}], "n_predict": 6}
    r = fim.post("/infill", json=body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["stop"] is True and answer["tokens_predicted"] >= 1 and answer["tokens_evaluated"] > 10
    assert answer["stop_type"] in ("limit", "eos")
    with fim.stream("POST", "/infill", json=dict(body, stream=True)) as stream:
        events = [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: ")]
    assert events[-1]["stop"] is True
    assert "".join(e["content"] for e in events if not e["stop"]) == answer["content"]  # greedy: the same
    r = fim.post("/api/generate", json={"model": "fim", "prompt": body["input_prefix"],
                                        "suffix": body["input_suffix"], "stream": False,
                                        "options": {"num_predict": 6}})
    assert r.status_code == 200 and r.json()["done"], r.text
    r = fim.post("/v1/completions", json={"model": "fim", "prompt": body["input_prefix"],
                                          "suffix": body["input_suffix"], "max_tokens": 6})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1, r.text


def test_ollama_logprobs(http: httpx.Client) -> None:
    """Ollama's `logprobs` / `top_logprobs` on chat and generate (part of its API level)."""
    body = {"model": "smol", "messages": [{"role": "user", "content": "Hi"}], "logprobs": True,
            "top_logprobs": 2, "options": {"num_predict": 3}}
    whole = http.post("/api/chat", json=dict(body, stream=False)).json()
    assert len(whole["logprobs"]) == whole["eval_count"]
    first = whole["logprobs"][0]
    assert set(first) >= {"token", "logprob", "bytes", "top_logprobs"} and len(first["top_logprobs"]) == 2
    assert "".join(e["token"] for e in whole["logprobs"]) == whole["message"]["content"]
    lines = [json.loads(line) for line in http.post("/api/chat", json=body).text.splitlines()]
    streamed = [e for line in lines for e in line.get("logprobs", [])]
    assert [e["token"] for e in streamed] == [e["token"] for e in whole["logprobs"]]
    plain = http.post("/api/generate", json={"model": "smol", "prompt": "Hi", "stream": False,
                                             "options": {"num_predict": 2}}).json()
    assert "logprobs" not in plain
