"""Nothing global: two apps built in one process, with different settings and families,
keep their error envelopes, their metrics and their routes apart."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from lokal.api import ollama, openai
from lokal.api.app import FAMILIES, create_app
from lokal.cli.main import make_registry
from lokal.engines.fake import FakeEngine
from tests.fakeengine import MODEL, _OnlyGiven, write_gguf


def _app(folder: Path, families=FAMILIES, **settings):  # noqa: ANN001, ANN202
    folder.mkdir()
    write_gguf(folder / f"{MODEL}.gguf")
    (folder / f"{MODEL}.yaml").write_text(f"name: {MODEL}\nparameters:\n  model: {MODEL}.gguf\n")
    config = _OnlyGiven(models_path=folder, address="127.0.0.1:0", threads=1, **settings)
    registry = make_registry(config, 1, lambda name, options: FakeEngine(options, "Hi"))
    return create_app(config, registry, families)


def _requests(client: TestClient, family: str, headers: dict[str, str] | None = None) -> float:
    total = 0.0
    for line in client.get("/metrics", headers=headers or {}).text.splitlines():
        if line.startswith("lokal_requests_total{") and f'family="{family}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_two_apps_share_no_envelopes_metrics_or_routes(tmp_path: Path) -> None:
    full = _app(tmp_path / "a")
    small = _app(tmp_path / "b", families=(openai.FAMILY, ollama.FAMILY), api_key="k")
    with TestClient(full) as a, TestClient(small) as b:
        unknown = {"model": "nope", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
        # The Messages family is only in the first app: its envelope is Anthropic's there,
        # and the second answers the same path as a route it does not have, in OpenAI's.
        assert a.post("/v1/messages", json=unknown).json()["type"] == "error"
        missing = b.post("/v1/messages", json=unknown, headers={"Authorization": "Bearer k"})
        assert missing.status_code == 404 and set(missing.json()) == {"error"}
        assert missing.json()["error"]["code"] == 404
        # Settings stay apart: only the second wants a key.
        assert a.get("/v1/models").status_code == 200
        assert b.get("/v1/models").status_code == 401
        # Ollama's envelope in both (both have the family).
        shown = a.post("/api/show", json={"model": "nope"})
        assert shown.status_code == 404 and set(shown.json()) == {"error"}
        # Metrics: each app counts its own requests only.
        assert a.post("/v1/chat/completions", json={"model": MODEL, "messages": [
            {"role": "user", "content": "hi"}]}).status_code == 200
        assert _requests(a, "openai") >= 1 and _requests(a, "anthropic") == 1
        assert _requests(b, "anthropic", {"Authorization": "Bearer k"}) == 0
        headers = {"Authorization": "Bearer k"}
        assert _scraped_total(b, headers) < _scraped_total(a, {})


def _scraped_total(client: TestClient, headers: dict[str, str]) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in client.get("/metrics", headers=headers).text.splitlines()
               if line.startswith("lokal_requests_total{"))
