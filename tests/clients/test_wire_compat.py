"""What real clients send (issue #11), against a real lokal with SmolLM2 and all-MiniLM:
the OpenAI SDK's completions logprobs and echo, llama.cpp's request names
(`n_predict`, a top-level `json_schema`, `cache_prompt`, `n_probs`), Hugging Face
TEI's rerank shape, tool calls that stream and survive a token limit, and the
server-wide token cap.

One server for the module; its MAX_TOKENS_DEFAULT is small so that the cap is
seen quickly (every other test sets its own limit).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.clients import CHAT, EMBED, start_server
from tests.conftest import LokalServer

CAP = 12
PROMPT = "The capital of France is"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
FORCED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture(scope="module")
def lokal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LokalServer]:
    server = start_server(tmp_path_factory, "wire", env={"MAX_TOKENS_DEFAULT": str(CAP)})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sdk(lokal: LokalServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{lokal.base}/v1", api_key="sk-unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def http(lokal: LokalServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=lokal.base, timeout=120) as client:
        yield client


# Completions logprobs, in the legacy completions shape ------------------------

def _check_legacy(logprobs: object, text: str, top: int) -> None:
    tokens = logprobs.tokens
    assert tokens and "".join(tokens) == text
    assert len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == len(logprobs.text_offset) == len(tokens)
    assert all(isinstance(lp, float) and lp <= 0 for lp in logprobs.token_logprobs)
    offsets, at = [], 0
    for token in tokens:
        offsets.append(at)
        at += len(token)
    assert logprobs.text_offset == offsets
    for token, lp, alternatives in zip(tokens, logprobs.token_logprobs, logprobs.top_logprobs):
        assert isinstance(alternatives, dict) and len(alternatives) == top
        if top:  # greedy: the sampled token is the likeliest one
            assert max(alternatives.values()) == pytest.approx(lp, abs=1e-4)
            assert alternatives.get(token) == pytest.approx(lp, abs=1e-4)


def test_completion_logprobs_in_the_completions_shape(sdk: openai.OpenAI) -> None:
    reply = sdk.completions.create(model=CHAT, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=3)
    choice = reply.choices[0]
    assert len(choice.logprobs.tokens) == reply.usage.completion_tokens
    _check_legacy(choice.logprobs, choice.text, 3)
    # Streamed: each chunk carries its own tokens; together they are the whole answer's.
    tokens, values, tops, offsets, text = [], [], [], [], ""
    for chunk in sdk.completions.create(model=CHAT, prompt=PROMPT, max_tokens=5, temperature=0,
                                        logprobs=3, stream=True):
        for part in chunk.choices:
            text += part.text
            if part.logprobs is not None:
                tokens += part.logprobs.tokens
                values += part.logprobs.token_logprobs
                tops += part.logprobs.top_logprobs
                offsets += part.logprobs.text_offset
    assert text == choice.text and tokens == choice.logprobs.tokens
    assert values == pytest.approx(choice.logprobs.token_logprobs, abs=1e-4)
    assert offsets == choice.logprobs.text_offset
    assert [list(t) for t in tops] == [list(t) for t in choice.logprobs.top_logprobs]


def test_completion_logprobs_zero_gives_the_sampled_tokens_only(sdk: openai.OpenAI) -> None:
    reply = sdk.completions.create(model=CHAT, prompt=PROMPT, max_tokens=3, temperature=0, logprobs=0)
    _check_legacy(reply.choices[0].logprobs, reply.choices[0].text, 0)


def test_llamacpp_n_probs_on_completions_and_chat(http: httpx.Client) -> None:
    r = http.post("/v1/completions", json={"model": CHAT, "prompt": PROMPT, "max_tokens": 3,
                                           "temperature": 0, "n_probs": 2})
    assert r.status_code == 200, r.text
    logprobs = r.json()["choices"][0]["logprobs"]
    assert set(logprobs) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    assert all(len(t) == 2 for t in logprobs["top_logprobs"])
    # Chat keeps the chat shape.
    r = http.post("/v1/chat/completions", json={"model": CHAT, "max_tokens": 3, "temperature": 0,
                                                "messages": [{"role": "user", "content": "Hi"}],
                                                "logprobs": True, "top_logprobs": 2})
    content = r.json()["choices"][0]["logprobs"]["content"]
    assert content and all(len(item["top_logprobs"]) == 2 and "logprob" in item for item in content)


# Echo ------------------------------------------------------------------------

def test_echo_returns_the_prompt_first(sdk: openai.OpenAI) -> None:
    plain = sdk.completions.create(model=CHAT, prompt=PROMPT, max_tokens=4, temperature=0)
    echoed = sdk.completions.create(model=CHAT, prompt=PROMPT, max_tokens=4, temperature=0, echo=True)
    assert echoed.choices[0].text == PROMPT + plain.choices[0].text
    chunks = list(sdk.completions.create(model=CHAT, prompt=PROMPT, max_tokens=4, temperature=0,
                                         echo=True, stream=True))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert texts[0].startswith(PROMPT)
    assert "".join(texts) == echoed.choices[0].text


def test_echo_with_several_prompts_and_choices(sdk: openai.OpenAI) -> None:
    prompts = ["One, two,", "Red, green,"]
    reply = sdk.completions.create(model=CHAT, prompt=prompts, max_tokens=3, temperature=0, echo=True, n=2)
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    for choice in reply.choices:
        assert choice.text.startswith(prompts[choice.index // 2]), choice


def test_echo_with_logprobs_is_refused_not_answered_without_them(sdk: openai.OpenAI, http: httpx.Client) -> None:
    """llama.cpp computes no logprobs for prompt tokens: saying so beats leaving them out."""
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as caught:
            sdk.completions.create(model=CHAT, prompt=PROMPT, max_tokens=3, echo=True, logprobs=1,
                                   stream=stream)
        error = caught.value.body
        assert error["param"] == "logprobs" and "prompt" in error["message"]
    r = http.post("/v1/completions", json={"model": CHAT, "prompt": PROMPT, "max_tokens": 2, "echo": True,
                                           "n_probs": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs"
    # A token-id prompt cannot be echoed: the engine cannot turn ids back into text.
    r = http.post("/v1/completions", json={"model": CHAT, "prompt": [504, 3458, 282], "max_tokens": 2,
                                           "echo": True})
    assert r.status_code == 400 and r.json()["error"]["param"] == "echo"
    assert "token ids" in r.json()["error"]["message"]
    # The server keeps serving.
    assert sdk.completions.create(model=CHAT, prompt=PROMPT, max_tokens=2).choices[0].text


# llama.cpp's names and the token cap ------------------------------------------

def test_n_predict_limits_like_max_tokens(http: httpx.Client) -> None:
    for path, body in (("/v1/completions", {"prompt": PROMPT}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Tell a story."}]})):
        r = http.post(path, json={"model": CHAT, "n_predict": 3, "ignore_eos": True, **body})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 3
        assert r.json()["choices"][0]["finish_reason"] == "length"


def test_a_missing_limit_stops_at_the_server_cap(http: httpx.Client) -> None:
    r = http.post("/v1/completions", json={"model": CHAT, "prompt": PROMPT, "ignore_eos": True})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == CAP
    assert r.json()["choices"][0]["finish_reason"] == "length"


def test_top_level_json_schema(http: httpx.Client) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    for path, body in (("/v1/chat/completions", {"messages": [{"role": "user", "content": "Is water wet?"}]}),
                       ("/v1/completions", {"prompt": "Is water wet? Answer in JSON:"})):
        r = http.post(path, json={"model": CHAT, "json_schema": schema, "max_tokens": 32, "temperature": 0,
                                  **body})
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        text = choice["message"]["content"] if "message" in choice else choice["text"]
        assert isinstance(json.loads(text)["ok"], bool), text


def test_cache_prompt_false_skips_the_prompt_cache(http: httpx.Client) -> None:
    body = {"model": CHAT, "messages": [{"role": "user", "content": "Name a colour of the rainbow."}],
            "max_tokens": 8, "temperature": 0, "seed": 1}
    http.post("/v1/chat/completions", json=body)
    cached = http.post("/v1/chat/completions", json=body).json()
    assert cached["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    fresh = http.post("/v1/chat/completions", json={**body, "cache_prompt": False}).json()
    assert fresh["usage"].get("prompt_tokens_details", {}).get("cached_tokens", 0) == 0
    assert fresh["choices"][0]["message"] == cached["choices"][0]["message"]


# Tool calls --------------------------------------------------------------------

def test_streamed_tool_call_streams_and_matches_the_whole_answer(sdk: openai.OpenAI) -> None:
    request = {"model": CHAT, "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
               "tools": [WEATHER], "tool_choice": FORCED, "temperature": 0, "max_tokens": 48,
               "extra_body": {"cache_prompt": False}}
    whole = sdk.chat.completions.create(**request)
    [call] = whole.choices[0].message.tool_calls
    assert whole.choices[0].finish_reason == "tool_calls" and whole.choices[0].message.content is None
    parts = [c.choices[0].delta.tool_calls[0] for c in sdk.chat.completions.create(**request, stream=True)
             if c.choices and c.choices[0].delta.tool_calls]
    assert len(parts) > 1, "the call arrived in one chunk"
    assert parts[0].id and parts[0].function.name == "get_weather" and parts[0].type == "function"
    assert all(p.id is None and not p.function.name for p in parts[1:])
    assert "".join(p.function.arguments or "" for p in parts) == call.function.arguments
    assert call.function.name == "get_weather" and isinstance(json.loads(call.function.arguments), dict)


def test_tool_call_cut_by_max_tokens_is_still_a_tool_call(sdk: openai.OpenAI) -> None:
    request = {"model": CHAT, "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
               "tools": [WEATHER], "tool_choice": FORCED, "temperature": 0, "max_tokens": 9}
    choice = sdk.chat.completions.create(**request).choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather" and '"function"' not in call.function.arguments
    streamed = [c.choices[0] for c in sdk.chat.completions.create(**request, stream=True) if c.choices]
    assert streamed[-1].finish_reason == "length"
    assert not any(c.delta.content for c in streamed)
    assert "".join(c.delta.tool_calls[0].function.arguments or "" for c in streamed
                   if c.delta.tool_calls) == call.function.arguments


# Hugging Face TEI's rerank -------------------------------------------------------

DOCS = ["Paris is the capital of France.", "Bananas are yellow.", "France borders Spain."]


@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank"])
def test_tei_rerank_shape(http: httpx.Client, path: str) -> None:
    query = "What is the capital of France?"
    jina = http.post(path, json={"model": EMBED, "query": query, "documents": DOCS}).json()
    expected = {item["index"]: item["relevance_score"] for item in jina["results"]}
    r = http.post(path, json={"model": EMBED, "query": query, "texts": DOCS})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert isinstance(answer, list) and [set(item) for item in answer] == [{"index", "score"}] * 3
    assert [item["index"] for item in answer] == [item["index"] for item in jina["results"]]
    assert [item["score"] for item in answer] == pytest.approx([expected[i["index"]] for i in answer])
    with_text = http.post(path, json={"model": EMBED, "query": query, "texts": DOCS, "return_text": True,
                                      "raw_scores": True, "truncate": True}).json()
    assert [item["text"] for item in with_text] == [DOCS[item["index"]] for item in answer]
    # A cosine rerank has no logits: raw scores are the scores.
    assert [item["score"] for item in with_text] == pytest.approx([item["score"] for item in answer])
    # TEI serves one model and its clients may not name it: the only one that reranks here.
    unnamed = http.post(path, json={"query": query, "texts": DOCS}).json()
    assert [item["index"] for item in unnamed] == [item["index"] for item in answer]


def test_rerank_shapes_refused_when_mixed_or_empty(http: httpx.Client) -> None:
    for body in ({"model": EMBED, "query": "q", "texts": ["a"], "documents": ["b"]},
                 {"model": EMBED, "query": "q"}, {"query": "q", "documents": ["a"]},
                 {"model": EMBED, "query": "q", "texts": []}):
        r = http.post("/v1/rerank", json=body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["message"]
