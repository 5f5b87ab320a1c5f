"""The routes the web UI adds, on the fake engine: /lokal/models (states, load, unload),
the static files at /ui, and `GET /` sending browsers there (API clients are not)."""

from __future__ import annotations

import gzip
import re
import threading

import httpx

from lokal.api.ui.redirect import prefers_html
from lokal.engines.fake import reply, stall
from tests.fakeengine import MODEL, chat

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"
BROKEN = {"broken.yaml": "name: broken\nparameters:\n  model: missing.gguf\n"}


def _models(client: httpx.Client) -> dict[str, dict]:
    r = client.get("/lokal/models")
    assert r.status_code == 200, r.text
    return {m["name"]: m for m in r.json()["data"]}


def test_models_list_every_entry_with_its_state(fake_server) -> None:
    server = fake_server(config="context_size: 2048\n", files=BROKEN)
    with server.client() as client:
        models = _models(client)
        assert set(models) == {MODEL, "broken"}
        fake = models[MODEL]
        assert fake["state"] == "idle" and fake["instances"] == []
        assert fake["tasks"] == ["chat", "complete"] and fake["kind"] == "gguf"
        assert fake["file"] == f"{MODEL}.gguf" and fake["size_bytes"] > 0
        assert fake["context_size"] == 2048 and fake["trained_context"] == 4096
        broken = models["broken"]
        assert broken["state"] == "broken" and "missing.gguf" in broken["error"]
        assert broken["tasks"] == [] and broken["context_size"] is None


def test_load_and_unload(fake_server) -> None:
    server = fake_server()
    with server.client() as client:
        r = client.post(f"/lokal/models/{MODEL}/load")
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "loaded"
        assert [i["purpose"] for i in r.json()["instances"]] == ["generate"]
        assert _models(client)[MODEL]["state"] == "loaded"
        assert client.post(f"/lokal/models/{MODEL}/load").status_code == 200  # already: fine
        assert len(server.engines) == 1
        r = client.post(f"/lokal/models/{MODEL}/unload")
        assert r.status_code == 200 and r.json()["unloaded"] is True and r.json()["state"] == "idle"
        r = client.post(f"/lokal/models/{MODEL}/unload")
        assert r.status_code == 200 and r.json()["unloaded"] is False
        assert client.get(f"/lokal/models/{MODEL}/state").json()["state"] == "idle"


def test_unknown_and_broken_models_are_errors_in_the_envelope(fake_server) -> None:
    server = fake_server(files=BROKEN)
    with server.client() as client:
        for path in ("/lokal/models/nope/load", "/lokal/models/nope/unload"):
            r = client.post(path)
            assert r.status_code == 404, r.text
            assert r.json()["error"]["code"] == 404 and "nope" in r.json()["error"]["message"]
        assert client.get("/lokal/models/nope/state").status_code == 404
        r = client.post("/lokal/models/broken/load")
        as_chat = client.post("/v1/chat/completions", json=dict(chat(), model="broken"))
        assert r.status_code == as_chat.status_code >= 500, r.text  # as a request for it is answered
        assert "missing.gguf" in r.json()["error"]["message"]
        assert client.get("/healthz").status_code == 200


def test_a_loading_model_says_so(fake_server) -> None:
    gate = threading.Event()
    server = fake_server()
    factory = server._factory

    def slow_factory(engine, options):  # noqa: ANN001, ANN202
        gate.wait(10)
        return factory(engine, options)

    server.registry.pool._factory = slow_factory
    with server.client() as client:
        loading = threading.Thread(target=lambda: client.post(f"/lokal/models/{MODEL}/load"))
        loading.start()
        try:
            server.wait(lambda: _models(client)[MODEL]["state"] == "loading", what="loading")
        finally:
            gate.set()
            loading.join()
        assert _models(client)[MODEL]["state"] == "loaded"


def test_load_and_unload_need_the_admin_key(fake_server) -> None:
    server = fake_server(api_key="sk-user", admin_api_key="sk-admin")
    with server.client() as client:
        user = {"Authorization": "Bearer sk-user"}
        assert client.get("/lokal/models").status_code == 401
        assert client.get("/lokal/models", headers=user).status_code == 200
        r = client.post(f"/lokal/models/{MODEL}/load", headers=user)
        assert r.status_code == 401 and "ADMIN_API_KEY" in r.json()["error"]["message"]
        r = client.post(f"/lokal/models/{MODEL}/load", headers={"Authorization": "Bearer sk-admin"})
        assert r.status_code == 200, r.text


def test_the_page_is_served_without_a_key_and_gzipped(fake_server) -> None:
    server = fake_server(api_key="sk-user")
    with server.client() as client:
        for path in ("/ui", "/ui/", "/ui/app.js", "/ui/api.js", "/ui/markdown.js", "/ui/app.css"):
            r = client.get(path)
            assert r.status_code == 200, (path, r.text)
            assert r.headers["x-content-type-options"] == "nosniff"
        page = client.get("/ui/")
        assert page.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert re.search(r'<script type="module" src="/ui/app.js">', page.text)
        raw = client.get("/ui/app.js", headers={"Accept-Encoding": "gzip"}, extensions={})
        assert raw.headers.get("content-encoding") == "gzip" and "import" in raw.text
        plain = client.get("/ui/app.js", headers={"Accept-Encoding": "identity"})
        assert "content-encoding" not in plain.headers
        assert len(gzip.compress(plain.content)) > 0
        again = client.get("/ui/app.js", headers={"If-None-Match": plain.headers["etag"]})
        assert again.status_code == 304
        assert client.get("/ui/secret.txt").status_code == 401  # not a UI file: the key applies
        assert client.get("/v1/models").status_code == 401


def test_root_sends_browsers_to_the_ui_and_nobody_else(fake_server) -> None:
    server = fake_server(api_key="sk-user")
    with server.client() as client:
        r = client.get("/", headers={"Accept": BROWSER})
        assert r.status_code == 307 and r.headers["location"] == "/ui/"
        assert client.head("/", headers={"Accept": BROWSER}).status_code == 307
        for accept in ("*/*", "application/json", "", "text/html;q=0.1, application/json"):
            r = client.get("/", headers={"Accept": accept} if accept else {})
            assert r.status_code == 401, accept  # what / answers today with a key set
        assert client.post("/", headers={"Accept": BROWSER}).status_code == 401


def test_prefers_html() -> None:
    assert prefers_html(BROWSER)
    assert prefers_html("text/html")
    assert prefers_html("application/json;q=0.5, text/html")
    assert not prefers_html("*/*")
    assert not prefers_html("application/json, text/html;q=0.9")
    assert not prefers_html("text/html;q=0")
    assert not prefers_html("text/html;q=oops, application/json")
    assert not prefers_html("")


def test_a_client_gone_while_a_token_is_awaited_is_counted_as_cancelled(fake_server) -> None:
    gate = threading.Event()
    server = fake_server(lambda request: [reply("first "), stall(gate)])
    try:
        with server.client() as client:
            with client.stream("POST", "/v1/chat/completions", json=chat("hi", stream=True)) as r:
                for line in r.iter_lines():
                    if '"content":"first' in line:
                        break  # hang up while the engine is silent

            def counted() -> bool:
                text = client.get("/metrics").text
                return 'lokal_generation_requests_total{model="fake",status="cancelled"} 1.0' in text

            server.wait(counted, what="the generation to count as cancelled")
            assert 'status="error"' not in client.get("/metrics").text
    finally:
        gate.set()


def test_a_crash_looping_model_shows_as_failed_and_a_load_retries_it(fake_server) -> None:
    server = fake_server()
    # What the pool records after repeated engine crashes (tests/reliability/test_workers.py
    # makes real ones): the model is refused until it is loaded again by hand.
    server.registry.pool.failed[MODEL] = "its engine stopped 3 times in a row (SIGABRT)"
    with server.client() as client:
        model = _models(client)[MODEL]
        assert model["state"] == "failed" and "SIGABRT" in model["error"]
        assert client.post("/v1/chat/completions", json=chat("hi")).status_code == 500
        r = client.post(f"/lokal/models/{MODEL}/load")
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "loaded" and r.json()["error"] is None
        assert client.post("/v1/chat/completions", json=chat("hi")).status_code == 200
