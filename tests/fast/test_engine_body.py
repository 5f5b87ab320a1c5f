"""What the engine is asked: config defaults, stop words, schemas, rendered prompts."""

from __future__ import annotations

import pytest

from lokal.engines.fake import reply, words
from tests.fakeengine import chat, completion, sse_events

# The LocalAI example's gpt-3.5-turbo config (the mission's models folder), on the fake engine.
GPT4ALL_CONFIG = """\
  top_k: 80
  temperature: 0.2
  top_p: 0.7
context_size: 1024
stopwords:
- "HUMAN:"
- "GPT:"
roles:
  user: " "
  system: " "
template:
  completion: completion
  chat: gpt4all
"""
GPT4ALL_TMPL = """\
The prompt below is a question to answer, a task to complete, or a conversation to respond to; \
decide which and write an appropriate response.
### Prompt:
{{.Input}}
### Response:
"""
TEMPLATES = {"gpt4all.tmpl": GPT4ALL_TMPL, "completion.tmpl": "{{.Input}}"}
PREAMBLE = GPT4ALL_TMPL.split("{{.Input}}")[0]


def test_config_defaults_and_stopwords_reach_the_engine(fake_server) -> None:
    server = fake_server(config="  temperature: 0.2\n  top_p: 0.7\n  top_k: 80\n  max_tokens: 50\n"
                                "  seed: 7\nstopwords:\n- \"HUMAN:\"\n- \"GPT:\"\n")
    with server.client() as client:
        assert client.post("/v1/chat/completions", json=chat("hi")).status_code == 200
        defaults = server.last.body
        assert client.post("/v1/chat/completions", json=chat(
            "hi", temperature=0, top_k=5, max_tokens=3, stop="END", user="u1")).status_code == 200
        overridden = server.last.body
        assert client.post("/v1/completions", json=completion(stop=["GPT:", "X"])).status_code == 200
        completing = server.last.body
    assert {k: defaults[k] for k in ("temperature", "top_p", "top_k", "max_tokens", "seed", "stop")} == {
        "temperature": 0.2, "top_p": 0.7, "top_k": 80, "max_tokens": 50, "seed": 7, "stop": ["HUMAN:", "GPT:"]}
    # What the request sets wins, zero included. The config's stop words (the model's format)
    # go to the engine; a one-choice request's own stop words are matched by lokal, which
    # can then say which one ended the answer (docs/architecture.md).
    assert (overridden["temperature"], overridden["top_k"], overridden["max_tokens"]) == (0, 5, 3)
    assert overridden["stop"] == ["HUMAN:", "GPT:"] and overridden["top_p"] == 0.7
    assert completing["stop"] == ["HUMAN:", "GPT:"] and completing["prompt"] == "Once upon a time"
    for body in (defaults, overridden, completing):
        assert not {"model", "user", "functions", "tools"} & set(body)


def test_request_fields_reach_the_engine_as_it_expects_them(fake_server) -> None:
    server = fake_server()
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    with server.client() as client:
        client.post("/v1/chat/completions", json=chat("hi", max_completion_tokens=9, logprobs=False,
                                                      top_logprobs=2, seed=3, n=1))
        first = server.last.body
        client.post("/v1/chat/completions", json=chat("hi", response_format={
            "type": "json_schema", "json_schema": {"name": "thing", "schema": schema}}))
        with_schema = server.last.body
        client.post("/v1/completions", json=completion(grammar='root ::= "yes" | "no"', ignore_eos=True,
                                                       logit_bias={"2": -100}))
        with_grammar = server.last.body
    assert first["max_tokens"] == 9 and "max_completion_tokens" not in first
    assert "logprobs" not in first and "top_logprobs" not in first and "n" not in first
    assert first["seed"] == 3 and "timeout" not in first
    assert with_schema["response_format"] == {"type": "json_schema",
                                              "json_schema": {"name": "thing", "schema": schema}}
    assert with_grammar["grammar"] == 'root ::= "yes" | "no"'
    assert with_grammar["ignore_eos"] is True and with_grammar["logit_bias"] == {"2": -100}


def test_config_system_prompt_comes_first(fake_server) -> None:
    server = fake_server(config="system_prompt: You are terse.\n")
    with server.client() as client:
        client.post("/v1/chat/completions", json=chat("hi"))
        added = server.last.body["messages"]
        client.post("/v1/chat/completions", json={"model": "fake", "messages": [
            {"role": "system", "content": "Mine."}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}]})
        kept = server.last.body["messages"]
    assert added == [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hi"}]
    assert kept == [{"role": "system", "content": "Mine."}, {"role": "user", "content": "hi"}]


def test_localai_templates_render_the_prompt(fake_server) -> None:
    server = fake_server([words("Paris.")], config=GPT4ALL_CONFIG, files=TEMPLATES)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]
    with server.client() as client:
        r = client.post("/v1/chat/completions", json={"model": "fake", "messages": messages})
        rendered = server.last
        c = client.post("/v1/completions", json=completion("Say hi"))
        completed = server.last
    assert rendered.mode == "completion" and "messages" not in rendered.body
    assert rendered.body["prompt"] == PREAMBLE + " Be brief.\n Capital of France?\n### Response:\n"
    assert rendered.body["stop"] == ["HUMAN:", "GPT:"]
    assert (rendered.body["temperature"], rendered.body["top_k"], rendered.body["top_p"]) == (0.2, 80, 0.7)
    # Run as a completion, answered as a chat.
    data = r.json()
    assert data["object"] == "chat.completion" and data["id"].startswith("chatcmpl-")
    assert data["choices"][0]["message"] == {"role": "assistant", "content": "Paris."}
    assert completed.body["prompt"] == "Say hi" and c.json()["choices"][0]["text"] == "Paris."


def test_templated_chat_streams_as_chat_chunks(fake_server) -> None:
    server = fake_server([reply("Par", "is.", prompt_tokens=12)], config=GPT4ALL_CONFIG, files=TEMPLATES)
    with server.client() as client:
        with client.stream("POST", "/v1/chat/completions",
                           json=chat("Capital?", stream=True, stream_options={"include_usage": True})) as r:
            events = sse_events(r.read().decode())
    assert server.last.mode == "completion"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(ch["delta"].get("content") or "" for c in chunks[:-1] for ch in c["choices"]) == "Paris."
    assert [c["choices"][-1]["finish_reason"] for c in chunks[:-1]][-1] == "stop"
    assert all("text" not in ch for c in chunks for ch in c["choices"])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == 12


def test_templated_chat_stream_has_one_choice_per_index_per_chunk(fake_server) -> None:
    server = fake_server([reply("Par", "is.")], config=GPT4ALL_CONFIG, files=TEMPLATES)
    with server.client() as client:
        events = sse_events(client.post("/v1/chat/completions", json=chat("Capital?", stream=True)).text)
    chunks = events[:-1]
    for c in chunks:
        indices = [ch["index"] for ch in c["choices"]]
        assert len(indices) == len(set(indices)), c
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "Paris."


def test_templated_chat_with_functions(fake_server) -> None:
    server = fake_server([words('{"function": "f", "arguments": {"x": 1}}')], config=GPT4ALL_CONFIG,
                         files=TEMPLATES)
    with server.client() as client:
        r = client.post("/v1/chat/completions", json=chat("call f", functions=[
            {"name": "f", "parameters": {"type": "object"}}]))
    body = server.last.body
    assert server.last.mode == "completion" and "You can call these functions:" in body["prompt"]
    assert body["json_schema"]["oneOf"][0]["properties"]["function"] == {"const": "f"}
    assert r.json()["choices"][0]["message"]["function_call"] == {"name": "f", "arguments": '{"x": 1}'}


@pytest.mark.parametrize("cap", [None, 0, 64])
def test_a_missing_token_limit_gets_the_server_cap(fake_server, cap) -> None:
    """Issue #11: the request's limit (max_tokens or llama.cpp's n_predict), else the
    config's, else MAX_TOKENS_DEFAULT (default 2048; 0: no cap), for chat and completions."""
    settings = {} if cap is None else {"max_tokens_default": cap}
    server = fake_server(**settings, files={"capped.yaml": "name: capped\nparameters:\n  model: fake.gguf\n"
                                                          "  max_tokens: 7\n"})
    want = 2048 if cap is None else cap or None
    with server.client() as client:
        bodies = []
        for path, body in (("/v1/chat/completions", chat("hi")), ("/v1/completions", completion()),
                           ("/v1/completions", completion(n_predict=5)),
                           ("/v1/chat/completions", chat("hi", n_predict=6, max_tokens=4)),
                           ("/v1/completions", completion(model="capped"))):
            assert client.post(path, json=body).status_code == 200
            bodies.append(server.last.body)
    assert [b.get("max_tokens") for b in bodies] == [want, want, 5, 4, 7]
    assert all("n_predict" not in b for b in bodies)


def test_llamacpp_names_reach_the_engine(fake_server) -> None:
    """llama.cpp's own names: a top-level json_schema (completions get it as llama.cpp's
    completions read it: response_format is for chat only), cache_prompt, n_probs."""
    server = fake_server()
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    with server.client() as client:
        bodies = []
        for path, body in (("/v1/chat/completions", chat("hi", json_schema=schema, cache_prompt=False)),
                           ("/v1/completions", completion(json_schema=schema, n_probs=2)),
                           ("/v1/completions", completion(response_format={"type": "json_object"})),
                           ("/v1/completions", completion(logprobs=0))):
            assert client.post(path, json=body).status_code == 200
            bodies.append(server.last.body)
    chat_body, schema_body, object_body, logprobs_body = bodies
    assert chat_body["response_format"] == {"type": "json_schema", "json_schema": {"name": "schema", "schema": schema}}
    assert chat_body["cache_prompt"] is False
    assert schema_body["json_schema"] == schema and "response_format" not in schema_body
    assert schema_body["n_probs"] == 2
    assert object_body["json_schema"] == {"type": "object"} and "response_format" not in object_body
    # The legacy logprobs: 0 still wants the sampled tokens' logprobs, which the engine
    # gives only with at least one alternative.
    assert logprobs_body["n_probs"] == 1 and "logprobs" not in logprobs_body


def test_the_engine_is_told_whether_the_client_streams(fake_server) -> None:
    """Every API family says whether its client reads the answer as it is made (a remote
    engine then sends a whole answer in fewer pieces)."""
    server = fake_server()
    asked = [("/v1/chat/completions", chat("hi"), False),
             ("/v1/chat/completions", chat("hi", stream=True), True),
             ("/v1/completions", completion(), False),
             ("/v1/completions", completion(stream=True), True),
             ("/api/chat", {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "stream": False},
              False),
             ("/api/generate", {"model": "fake", "prompt": "hi"}, True),  # Ollama streams by default
             ("/v1/responses", {"model": "fake", "input": "hi"}, False),
             ("/v1/messages", {"model": "fake", "max_tokens": 8, "stream": True,
                               "messages": [{"role": "user", "content": "hi"}]}, True)]
    with server.client() as client:
        for path, body, streamed in asked:
            answer = client.post(path, json=body)
            answer.read()
            assert answer.status_code == 200, (path, answer.text)
            assert server.last.streamed is streamed, (path, body)
