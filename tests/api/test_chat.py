"""Chat completions through the OpenAI SDK and raw HTTP against a real server."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.conftest import MODEL


def test_models_list_has_the_configured_name(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list().data]
    assert ids == [MODEL]


def test_chat_answers_in_openai_shape(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=12)
    assert reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-")
    assert reply.model == MODEL
    assert reply.created > 1_600_000_000
    choice = reply.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    usage = reply.usage
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 12
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_max_tokens_limits_and_reports_length(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        max_tokens=5)
    assert reply.usage.completion_tokens == 5
    assert reply.choices[0].finish_reason == "length"


def test_ignore_eos_generates_past_the_end_of_the_answer(client: openai.OpenAI) -> None:
    # "Say OK." ends after a token or two; with ignore_eos the engine keeps going.
    ask = {"model": MODEL, "messages": [{"role": "user", "content": "Say OK."}], "max_tokens": 40,
           "temperature": 0}
    short = client.chat.completions.create(**ask)
    assert short.choices[0].finish_reason == "stop" and short.usage.completion_tokens < 40
    full = client.chat.completions.create(**ask, extra_body={"ignore_eos": True})
    assert full.usage.completion_tokens == 40
    assert full.choices[0].finish_reason == "length"


def test_max_completion_tokens_is_honoured(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        max_completion_tokens=3)
    assert reply.usage.completion_tokens == 3


def test_seeded_sampling_is_reproducible(client: openai.OpenAI) -> None:
    def ask() -> str:
        return client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Name a colour."}],
            max_tokens=10, temperature=1.5, top_p=0.95, seed=1234, extra_body={"top_k": 50},
        ).choices[0].message.content

    assert ask() == ask()


def test_temperature_zero_is_greedy_and_overrides_config(client: openai.OpenAI) -> None:
    # The config says temperature 0.2; 0 must win (LocalAI 1.x ignored zero).
    answers = {client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell me a fact about owls."}],
        max_tokens=16, temperature=0, seed=seed).choices[0].message.content for seed in (1, 2, 3)}
    assert len(answers) == 1


def test_stop_string_ends_generation(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count from 1 to 10, separated by commas."}],
        max_tokens=40, temperature=0, stop=["5"])
    assert "5" not in reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"


def test_stop_as_a_plain_string(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", json={
        "model": MODEL, "messages": [{"role": "user", "content": "Count from 1 to 10, separated by commas."}],
        "max_tokens": 40, "temperature": 0, "stop": "4"})
    assert r.status_code == 200
    assert "4" not in r.json()["choices"][0]["message"]["content"]


def test_logit_bias_bans_a_token(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=3, temperature=0,
        logprobs=True)
    first_token = plain.choices[0].logprobs.content[0]
    banned = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=3, temperature=0,
        logit_bias={str(_token_id(first_token)): -100}, logprobs=True)
    assert banned.choices[0].logprobs.content[0].token != first_token.token


def _token_id(logprob) -> int:  # noqa: ANN001
    extra = logprob.model_extra or {}
    return int(extra["id"])


def test_several_choices_with_n(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Name an animal."}], max_tokens=6, n=2,
        temperature=1.0)
    assert [c.index for c in reply.choices] == [0, 1]
    assert all(c.message.content for c in reply.choices)


def test_n_beyond_the_slots_is_a_clear_400(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", json={
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "n": 9})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == "n" and "PARALLEL_REQUESTS" in error["message"]
    # Several prompts take their turns in the slots: only n is bounded by them.
    r = http.post("/v1/completions", json={"model": MODEL, "prompt": [f"Count to {i}." for i in range(9)],
                                           "max_tokens": 2})
    assert r.status_code == 200 and len(r.json()["choices"]) == 9


def test_json_object_response_format_gives_json(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Describe a cat as JSON."}],
        max_tokens=60, temperature=0, response_format={"type": "json_object"})
    choice = reply.choices[0]
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(choice.message.content), dict)
    else:
        assert choice.message.content.lstrip().startswith("{")


def test_json_schema_response_format_is_enforced(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                               "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Invent a person."}], max_tokens=60,
        temperature=0, response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": schema}})
    data = json.loads(reply.choices[0].message.content)
    assert set(data) == {"name", "age"}
    assert isinstance(data["age"], int)


def test_grammar_constrains_output(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", json={
        "model": MODEL, "messages": [{"role": "user", "content": "Is the sky blue?"}], "max_tokens": 5,
        "grammar": 'root ::= "yes" | "no"'})
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] in ("yes", "no")


def test_bad_grammar_is_a_400(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", json={
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "grammar": "root ::= ("})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_bad_json_schema_is_a_400(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", json={
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}})
    assert r.status_code == 400


def test_penalties_and_unknown_fields_are_accepted(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", json={
        "model": MODEL, "messages": [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "max_tokens": 4, "presence_penalty": 0.5, "frequency_penalty": 0.5, "repeat_penalty": 1.1,
        "user": "someone", "some_future_field": {"x": 1}, "min_p": 0.05})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= 4


def test_multi_turn_conversation(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, max_tokens=8, messages=[
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"}])
    assert reply.choices[0].message.content


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/chat/completions", "/v1/v1/chat/completions"])
def test_route_answers_with_and_without_v1(http: httpx.Client, path: str) -> None:
    r = http.post(path, json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "chat.completion"


def test_curl_style_form_content_type_is_read_as_json(server) -> None:  # noqa: ANN001
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    r = httpx.post(f"{server.base}/v1/chat/completions", content=body,
                   headers={"content-type": "application/x-www-form-urlencoded"}, timeout=60)
    assert r.status_code == 200, r.text


def test_async_client_concurrent_requests(server) -> None:  # noqa: ANN001
    import asyncio

    async def main() -> list[str]:
        client = openai.AsyncOpenAI(base_url=f"{server.base}/v1", api_key="x", max_retries=0)
        replies = await asyncio.gather(*[client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Say the number {i}."}], max_tokens=6)
            for i in range(4)])
        await client.close()
        return [r.choices[0].message.content for r in replies]

    contents = asyncio.run(main())
    assert len(contents) == 4 and all(contents)


def test_retrieve_one_model(client: openai.OpenAI) -> None:
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
