"""Text completions: prompt forms, echo of the requested name, choices per prompt."""

from __future__ import annotations

import httpx
import openai

from tests.conftest import MODEL


def test_completion_shape(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=5,
                                      temperature=0)
    assert reply.object == "text_completion"
    assert reply.id.startswith("cmpl-")
    assert reply.model == MODEL
    assert reply.choices[0].index == 0
    assert isinstance(reply.choices[0].text, str) and reply.choices[0].text
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens <= 5
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_prompt_list_gives_one_choice_per_prompt(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=MODEL, prompt=["One, two,", "Red, green,"], max_tokens=4,
                                      temperature=0)
    assert [c.index for c in reply.choices] == [0, 1]
    single = client.completions.create(model=MODEL, prompt="Red, green,", max_tokens=4, temperature=0)
    assert reply.choices[1].text == single.choices[0].text


def test_token_id_prompt(http: httpx.Client) -> None:
    r = http.post("/v1/completions", json={"model": MODEL, "prompt": [504, 3458, 282], "max_tokens": 3})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == 3


def test_bare_route_and_stop(http: httpx.Client) -> None:
    r = http.post("/completions", json={"model": MODEL, "prompt": "1, 2, 3,", "max_tokens": 20,
                                        "temperature": 0, "stop": [","]})
    assert r.status_code == 200
    choice = r.json()["choices"][0]
    assert "," not in choice["text"]
    assert choice["finish_reason"] == "stop"


def test_empty_prompt_list_is_a_400(http: httpx.Client) -> None:
    r = http.post("/v1/completions", json={"model": MODEL, "prompt": []})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "prompt"
