"""Every bad request gets the OpenAI error envelope with the right status, and the
server keeps serving after each."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import MODEL

CHAT = "/v1/chat/completions"


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["code"] == status
    assert isinstance(error["message"], str) and error["message"]
    return error


def test_unknown_model_is_404_never_another_model(http: httpx.Client) -> None:
    error = _error(http.post(CHAT, json={"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}), 404)
    assert "gpt-4" in error["message"]
    assert error["param"] == "model"
    _error(http.post("/v1/completions", json={"model": "gpt-4", "prompt": "hi"}), 404)


def test_sdk_raises_typed_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="missing", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[], max_tokens=1)


@pytest.mark.parametrize("body, param", [
    ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
    ({"model": MODEL}, "messages"),
    ({"model": MODEL, "messages": "hello"}, "messages"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": 5}, "temperature"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "top_p": -1}, "top_p"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"}, "max_tokens"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": -3}, "max_tokens"),
    # llama.cpp would still generate a token for 0; OpenAI refuses it as well.
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 0},
     "max_completion_tokens"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 0}, "n"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 1000000}, "n"),
    ({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages.0"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stop": ["x"] * 10000}, "stop"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stop": "x" * 1_000_000}, "stop"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "logit_bias": {"hello": 1}}, "logit_bias"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
      "response_format": {"type": "json_schema"}}, "response_format"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": "yes please"}, "stream"),
])
def test_bad_values_are_400_naming_the_parameter(http: httpx.Client, body: dict, param: str) -> None:
    error = _error(http.post(CHAT, json=body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] is not None and error["param"].startswith(param)


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe\x00garbage", b"[1, 2, 3]", b"null", b"",
                                 b'{"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}], '
                                 b'"temperature": NaN}',
                                 b"[" * 100000 + b"]" * 100000])
def test_malformed_bodies_are_400(http: httpx.Client, raw: bytes) -> None:
    _error(http.post(CHAT, content=raw, headers={"content-type": "application/json"}), 400)


def test_context_overflow_is_400_with_token_counts(http: httpx.Client) -> None:
    r = http.post(CHAT, json={"model": MODEL, "messages": [{"role": "user", "content": "word " * 3000}]})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["type"] == "invalid_request_error"
    assert error["n_prompt_tokens"] > error["n_ctx"] == 2048
    assert "2048" in error["message"]


def test_body_over_upload_limit_is_413(http: httpx.Client) -> None:
    big = b'{"model": "x", "prompt": "' + b"a" * (16 * 1024 * 1024) + b'"}'
    _error(http.post("/v1/completions", content=big), 413)


def test_body_over_limit_without_length_header_is_413(server) -> None:  # noqa: ANN001
    def chunks():  # noqa: ANN202 - chunked transfer: no Content-Length to check up front
        yield b'{"model": "x", "prompt": "'
        for _ in range(17):
            yield b"a" * (1024 * 1024)
        yield b'"}'

    r = httpx.post(f"{server.base}/v1/completions", content=chunks(), timeout=60)
    _error(r, 413)


def test_unknown_route_and_wrong_method(http: httpx.Client) -> None:
    _error(http.get("/v1/nothing-here"), 404)
    _error(http.get(CHAT), 405)


def test_server_still_serves_after_errors(http: httpx.Client) -> None:
    r = http.post(CHAT, json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert r.status_code == 200
