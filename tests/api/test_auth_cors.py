"""API keys, open health routes, CORS preflight before auth."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import LokalServer, place_model

KEYS = "key-one,key-two"
NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LokalServer]:
    models = tmp_path_factory.mktemp("secured") / "models"
    place_model(models)
    with LokalServer(models, "--cors", "--cors-allow-origins", "https://app.example",
                     env={"API_KEY": KEYS}) as server:
        yield server


def test_routes_need_a_key(secured: LokalServer) -> None:
    r = httpx.get(f"{secured.base}/v1/models")
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{secured.base}/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(f"{secured.base}/models").status_code == 401


def test_every_key_works_in_either_header(secured: LokalServer) -> None:
    for headers in ({"Authorization": "Bearer key-one"}, {"Authorization": "bearer key-two"},
                    {"x-api-key": "key-two"}):
        r = httpx.get(f"{secured.base}/v1/models", headers=headers)
        assert r.status_code == 200, headers


def test_health_routes_are_open(secured: LokalServer) -> None:
    assert httpx.get(f"{secured.base}/healthz").status_code == 200
    assert httpx.get(f"{secured.base}/readyz").status_code == 200


def test_head_is_answered_as_get_without_a_body(secured: LokalServer) -> None:
    # Health checks often send HEAD (curl -I); it follows GET's rules, auth included.
    for path in ("/healthz", "/readyz"):
        r = httpx.head(f"{secured.base}{path}")
        assert r.status_code == 200 and r.content == b""
        assert r.headers["content-type"] == "application/json"
    assert httpx.head(f"{secured.base}/v1/models").status_code == 401
    r = httpx.head(f"{secured.base}/v1/models", headers={"Authorization": "Bearer key-one"})
    assert r.status_code == 200 and r.content == b""


def test_sdk_auth_errors_are_typed(secured: LokalServer) -> None:
    bad = openai.OpenAI(base_url=f"{secured.base}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    good = openai.OpenAI(base_url=f"{secured.base}/v1", api_key="key-one", max_retries=0)
    reply = good.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert reply.choices[0].message.content is not None


def test_cors_preflight_is_answered_before_auth(secured: LokalServer) -> None:
    r = httpx.options(f"{secured.base}/v1/chat/completions", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "https://app.example"


def test_cors_refuses_other_origins(secured: LokalServer) -> None:
    r = httpx.options(f"{secured.base}/v1/models", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in r.headers
    r = httpx.get(f"{secured.base}/v1/models", headers={"Origin": "https://evil.example",
                                                        "Authorization": "Bearer key-one"})
    assert "access-control-allow-origin" not in r.headers


def test_keys_never_reach_the_log(secured: LokalServer) -> None:
    httpx.get(f"{secured.base}/v1/models", headers={"Authorization": "Bearer key-one"})
    assert "key-one" not in secured.log() and "key-two" not in secured.log()


def test_without_keys_any_authorization_is_accepted(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    with LokalServer(models) as server:
        for value in ("Bearer 1", "Bearer None", "Bearer 123", "Basic Zm9vOmJhcg=="):
            assert httpx.get(f"{server.base}/v1/models", headers={"Authorization": value}).status_code == 200
        # CORS is off by default: no CORS headers for a browser origin.
        r = httpx.get(f"{server.base}/v1/models", headers={"Origin": "https://app.example"})
        assert "access-control-allow-origin" not in r.headers
