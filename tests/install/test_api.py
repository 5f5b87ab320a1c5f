"""LocalAI's model routes in-process (ASGI, the client address set in the scope): the admin
guard (#21), a LocalAI client's apply-and-poll, errors with the right status."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from lokal.api.app import create_app
from lokal.models.registry import EngineDefaults, local_registry
from lokal.settings import Settings
from tests.install.conftest import Fixture, blob, sha

GGUF = b"GGUF\x03\x00\x00\x00" + b"\x00" * 16


def app_for(models: Path, fixture: Fixture | None = None, **settings: Any) -> Any:
    models.mkdir(parents=True, exist_ok=True)
    if fixture is not None:
        settings.setdefault("allowed_download_hosts", "127.0.0.1")
        settings.setdefault("galleries", f'[{{"name": "test", "url": "{fixture.base}/index.yaml"}}]')
    s = Settings(models_path=models, **settings)
    registry = local_registry(models, EngineDefaults(threads=1, parallel=1))
    return create_app(s, registry)


async def call(app: Any, method: str, path: str, client: str = "127.0.0.1", **kw: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=(client, 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://lokal") as http:
        return await http.request(method, path, **kw)


MANAGEMENT = [("POST", "/models/apply", {"json": {"id": "x"}}), ("GET", "/models/available", {}),
              ("GET", "/models/jobs", {}), ("POST", "/models/delete/x", {}),
              ("POST", "/models/jobs/x/cancel", {}), ("DELETE", "/models/jobs/x", {})]


@pytest.mark.parametrize("method, path, kw", MANAGEMENT)
def test_management_from_another_host_without_a_key_is_403(tmp_path: Path, method: str, path: str,
                                                          kw: dict[str, Any]) -> None:
    app = app_for(tmp_path / "models")
    response = asyncio.run(call(app, method, path, client="192.0.2.7", **kw))
    assert response.status_code == 403
    message = response.json()["error"]["message"]
    assert "192.0.2.7" in message and "API_KEY" in message and "ALLOW_REMOTE_ADMIN" in message
    # A forwarded header does not make it local, and a local proxy forwarding for someone else is not local.
    spoofed = asyncio.run(call(app, "GET", "/models/jobs", client="192.0.2.7",
                               headers={"X-Forwarded-For": "127.0.0.1"}))
    assert spoofed.status_code == 403
    proxied = asyncio.run(call(app, "GET", "/models/jobs", headers={"X-Forwarded-For": "192.0.2.7"}))
    assert proxied.status_code == 403 and "TRUSTED_PROXIES" in proxied.json()["error"]["message"]
    # Inference routes keep today's rules.
    assert asyncio.run(call(app, "GET", "/v1/models", client="192.0.2.7")).status_code == 200


def test_loopback_keys_trusted_proxies_and_allow_remote_admin(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    models = tmp_path / "models"
    assert asyncio.run(call(app_for(models), "GET", "/models/jobs")).status_code == 200
    assert asyncio.run(call(app_for(models), "GET", "/models/jobs", client="::1")).status_code == 200
    keyed = app_for(models, api_key="k1")
    assert asyncio.run(call(keyed, "GET", "/models/jobs", client="192.0.2.7")).status_code == 401
    assert asyncio.run(call(keyed, "GET", "/models/jobs", client="192.0.2.7",
                            headers={"Authorization": "Bearer k1"})).status_code == 200
    admin = app_for(models, api_key="k1", admin_api_key="boss")
    assert asyncio.run(call(admin, "GET", "/models/jobs", client="192.0.2.7",
                            headers={"Authorization": "Bearer k1"})).status_code == 401
    assert asyncio.run(call(admin, "GET", "/models/jobs", client="192.0.2.7",
                            headers={"x-api-key": "boss"})).status_code == 200
    assert asyncio.run(call(admin, "GET", "/v1/models", client="192.0.2.7",
                            headers={"x-api-key": "k1"})).status_code == 200
    proxied = app_for(models, trusted_proxies="127.0.0.1")
    assert asyncio.run(call(proxied, "GET", "/models/jobs",
                            headers={"X-Forwarded-For": "192.0.2.7"})).status_code == 403
    assert asyncio.run(call(proxied, "GET", "/models/jobs",
                            headers={"X-Forwarded-For": "127.0.0.1"})).status_code == 200
    with caplog.at_level(logging.WARNING, logger="lokal"):
        opened = app_for(models, allow_remote_admin=True)
    assert "ALLOW_REMOTE_ADMIN" in caplog.text
    assert asyncio.run(call(opened, "GET", "/models/jobs", client="192.0.2.7")).status_code == 200


def test_a_localai_client_applies_and_polls(fixture: Fixture, tmp_path: Path) -> None:
    data = GGUF + blob(1 << 20)
    url = fixture.add("/tiny.gguf", data, rate=2 << 20)
    fixture.add("/index.yaml", yaml.safe_dump([{
        "name": "tiny", "description": "tiny", "config_file": {"parameters": {"model": "tiny.gguf"}},
        "files": [{"filename": "tiny.gguf", "uri": url, "sha256": sha(data)}]}]).encode())
    models = tmp_path / "models"
    app = app_for(models, fixture)

    async def go() -> None:
        available = (await call(app, "GET", "/models/available")).json()
        tiny = next(e for e in available if e["name"] == "tiny")
        assert tiny["installed"] is False and tiny["gallery"]["name"] == "test"
        assert any(e["gallery"]["name"] == "lokal" for e in available)  # the built-in gallery
        response = await call(app, "POST", "/models/apply", json={"id": "test@tiny", "name": "t"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"uuid", "status"} and body["status"].endswith(f"/models/jobs/{body['uuid']}")
        seen = []
        while True:
            status = (await call(app, "GET", f"/models/jobs/{body['uuid']}")).json()
            seen.append(status)
            if status["processed"]:
                break
            await asyncio.sleep(0.05)
        assert status["error"] is None and status["message"] == "completed" and status["progress"] == 100
        middle = [s for s in seen if s["file_name"] == "tiny.gguf" and 0 < s["progress"] < 100]
        assert middle and middle[0]["file_size"] == "1.0 MB" and middle[0]["downloaded_size"]
        assert body["uuid"] in (await call(app, "GET", "/models/jobs")).json()
        assert (await call(app, "GET", "/v1/models")).json()["data"][0]["id"] == "t"  # no restart
        available = (await call(app, "GET", "/models/available")).json()
        assert next(e for e in available if e["name"] == "tiny")["installed"] is False  # named t
        again = await call(app, "POST", "/models/apply", json={"id": "test@tiny", "name": "t"})
        assert again.status_code == 409
        deleted = await call(app, "POST", "/models/delete/t")
        assert deleted.status_code == 200 and sorted(deleted.json()["removed"]) == ["t.yaml", "tiny.gguf"]
        assert (await call(app, "GET", "/v1/models")).json()["data"] == []

    asyncio.run(go())
    assert sorted(p.name for p in models.iterdir()) == [".lokal"]


@pytest.mark.parametrize("body, status, text", [
    ({"id": "test@tiyn"}, 404, "Did you mean: tiny"),
    ({"id": "ftp://x/y.gguf"}, 400, "scheme"),
    ({"url": "file:///etc/passwd"}, 400, "command line only"),
    ({"id": "test@tiny", "name": "../../etc/x"}, 400, "may not contain"),
    ({"id": "test@tiny", "files": [{"filename": "../x", "uri": "https://example.org/x"}]}, 400, "'..'"),
    ({"url": "http://169.254.169.254/latest/meta-data/x.yaml"}, 400, "metadata"),
    ({}, 400, "give `id`"),
])
def test_apply_errors_answer_the_call(fixture: Fixture, tmp_path: Path, body: dict[str, Any], status: int,
                                      text: str) -> None:
    fixture.add("/index.yaml", yaml.safe_dump([{"name": "tiny", "config_file": {}}]).encode())
    app = app_for(tmp_path / "models", fixture)
    response = asyncio.run(call(app, "POST", "/models/apply", json=body))
    assert response.status_code == status, response.text
    assert text in response.json()["error"]["message"]


def test_a_full_disk_is_507_and_cancel_stops_a_job(fixture: Fixture, tmp_path: Path) -> None:
    url = fixture.add("/big.gguf", GGUF + blob(2 << 20), rate=1 << 20)
    app = app_for(tmp_path / "models", fixture)

    async def go() -> None:
        real = app.state.installer.downloader.free_bytes
        app.state.installer.downloader.free_bytes = lambda _: 1234
        full = await call(app, "POST", "/models/apply", json={"url": url})
        assert full.status_code == 507
        assert "bytes needed" in full.json()["error"]["message"] and "1234 bytes free" in full.json()["error"]["message"]
        app.state.installer.downloader.free_bytes = real
        started = (await call(app, "POST", "/models/apply", json={"url": url})).json()
        await asyncio.sleep(0.3)
        cancelled = await call(app, "POST", f"/models/jobs/{started['uuid']}/cancel")
        assert cancelled.json()["cancelled"] is True and cancelled.json()["processed"] is True
        assert (await call(app, "GET", "/models/jobs/nope")).status_code == 404

    asyncio.run(go())
    assert [p.name for p in (tmp_path / "models").iterdir() if not p.name.startswith(".")] == []
