"""Request ids from the client to the logs; JSON logs; no prompts and no keys in them."""

from __future__ import annotations

import json
import time
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LokalServer, place_model

CHAT = "smol.gguf"
KEY = "sk-observability-secret-4f1c9a"
MARKER = "zebra-marker-7731"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LokalServer]:
    models = tmp_path_factory.mktemp("logs") / "models"
    place_model(models, CHAT)
    with LokalServer(models, "--api-key", KEY, "--upload-limit", "1",
                     env={"LOG_FORMAT": "json"}) as srv:
        yield srv


def auth(**extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}", **extra}


def records(server: LokalServer) -> list[dict[str, Any]]:
    """Every line of the log, each one a JSON object."""
    lines = [line for line in server.log().splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"a log line is not JSON: {line!r}")
    return parsed


def access(server: LokalServer, request_id: str) -> dict[str, Any]:
    """The request's access line: written once the answer has been sent, so it may
    come a moment after the client has read the answer."""
    deadline = time.monotonic() + 30
    while True:
        found = [r for r in records(server)
                 if r.get("request_id") == request_id and r["logger"] == "lokal.access"]
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(found) == 1, found
    return found[0]


def chat(server: LokalServer, content: str = "Say hi.", headers: dict[str, str] | None = None,
         **extra: Any) -> httpx.Response:
    return httpx.post(f"{server.base}/v1/chat/completions", headers=headers or auth(), timeout=120, json={
        "model": CHAT, "messages": [{"role": "user", "content": content}], "max_tokens": 4,
        "ignore_eos": True, **extra})


def test_a_client_request_id_comes_back_and_is_in_the_access_line(server: LokalServer) -> None:
    rid = "client-id_1.2:3"
    r = chat(server, headers=auth(**{"X-Request-ID": rid}))
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == rid
    line = access(server, rid)
    usage = r.json()["usage"]
    assert line["level"] == "info"
    assert (line["method"], line["path"], line["route"], line["status"]) == \
        ("POST", "/v1/chat/completions", "/chat/completions", 200)
    assert line["model"] == CHAT and line["family"] == "openai"
    assert line["prompt_tokens"] == usage["prompt_tokens"]
    assert line["completion_tokens"] == usage["completion_tokens"] == 4
    assert line["duration_s"] > 0
    assert rid in line["message"] or line["message"].startswith("POST /v1/chat/completions 200")
    # The first request loaded the model: those lines are tied to it too.
    loading = [rec for rec in records(server) if rec["message"].startswith("loading model")]
    assert loading and loading[0].get("request_id") == rid


def test_ids_are_generated_and_malformed_ones_replaced(server: LokalServer) -> None:
    r = chat(server)
    generated = r.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert access(server, generated)["status"] == 200
    for bad in ("has space", "x" * 129, "semi;colon", "<script>"):
        r = httpx.get(f"{server.base}/v1/models", headers=auth(**{"X-Request-ID": bad}), timeout=30)
        assert r.status_code == 200
        assert r.headers["x-request-id"] != bad and re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
        access(server, r.headers["x-request-id"])
        assert bad not in server.log()


def test_answers_of_the_middleware_carry_ids_too(server: LokalServer) -> None:
    r = httpx.post(f"{server.base}/v1/chat/completions", json={}, headers={"X-Request-ID": "no-key-1"}, timeout=30)
    assert r.status_code == 401 and r.headers["x-request-id"] == "no-key-1"
    assert access(server, "no-key-1")["status"] == 401
    r = httpx.post(f"{server.base}/v1/embeddings", content=b"x" * (2 << 20), timeout=30,
                   headers=auth(**{"X-Request-ID": "too-big-1"}))
    assert r.status_code == 413 and r.headers["x-request-id"] == "too-big-1"
    assert access(server, "too-big-1")["route"] == "/embeddings"
    r = httpx.get(f"{server.base}/no/such/route", headers=auth(**{"X-Request-ID": "nowhere-1"}), timeout=30)
    assert r.status_code == 404 and r.headers["x-request-id"] == "nowhere-1"
    assert access(server, "nowhere-1")["route"] == "unmatched"


def test_prompts_and_keys_stay_out_of_the_logs(server: LokalServer) -> None:
    r = chat(server, content=f"Repeat after me: {MARKER}", headers=auth(**{"X-Request-ID": "secret-1"}))
    assert r.status_code == 200
    with httpx.stream("POST", f"{server.base}/v1/chat/completions", headers=auth(), timeout=120, json={
            "model": CHAT, "messages": [{"role": "user", "content": MARKER}], "max_tokens": 4,
            "stream": True}) as s:
        assert s.status_code == 200 and list(s.iter_lines())
    bad = httpx.post(f"{server.base}/v1/chat/completions", timeout=30, json={"model": MARKER},
                     headers={"Authorization": f"Bearer {KEY}-wrong"})
    assert bad.status_code == 401
    access(server, "secret-1")
    log = server.log()
    assert MARKER not in log
    assert KEY not in log
    records(server)  # still one JSON object a line


def test_text_logs_carry_the_request_id(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    with LokalServer(models) as server:
        r = httpx.get(f"{server.base}/v1/models", headers={"X-Request-ID": "text-1"}, timeout=30)
        assert r.status_code == 200
        line = next(line for line in server.wait_log("[text-1]").splitlines() if "[text-1]" in line)
        assert "lokal.access: GET /v1/models 200" in line
