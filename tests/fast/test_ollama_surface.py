"""The Ollama door as Codex --oss and Open WebUI walk it: /api/version passes Codex's
check, /api/status, /api/tags lists only what chats, completes or embeds, a repeated
/api/pull answers `success`, a pull from a source that cannot be reached is a 5xx."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from tests.fakeengine import write_gguf
from tests.install.conftest import Fixture
from tests.ports import free_port

AGENTS = Path(__file__).resolve().parents[1] / "fixtures" / "agents"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("-")[0].split("."))


def test_codex_oss_probes(fake_server) -> None:
    server = fake_server("ok")
    with server.client() as client:
        for n in (1, 2, 3):  # /v1/models, /api/version, /api/tags as Codex sent them
            record = json.loads((AGENTS / "codex-oss" / f"{n:03d}.json").read_text())
            r = client.request(record["method"], record["path"])
            assert r.status_code == 200, (record["path"], r.text)
        version = client.get("/api/version").json()["version"]
        assert _version(version) >= (0, 13, 4)  # "Codex requires Ollama 0.13.4 or newer"
        assert client.get("/api/status").json() == {"cloud": {"disabled": True, "source": "config"}}
        # Codex pulls the name it was given when /api/tags lists it only with :latest.
        record = json.loads((AGENTS / "codex-oss" / "004.json").read_text())
        r = client.post("/api/pull", json=dict(record["body"], model="fake"))
        assert r.status_code == 200 and [json.loads(line)["status"] for line in r.text.splitlines()][-1] == "success"


def test_tags_lists_what_completes_or_embeds(fake_server) -> None:
    server = fake_server("ok", files={
        "emb.gguf": None, "emb.yaml": "name: emb\nparameters:\n  model: emb.gguf\nembeddings: true\n",
        # a CTranslate2 Whisper folder, as the catalog recognises one
        "stt/model.bin": "", "stt/config.json": '{"alignment_heads": [[1, 0]]}',
        "stt.yaml": "name: stt\nbackend: whisper\nparameters:\n  model: stt\n"})
    with server.client() as client:
        listed = {m["name"]: m["capabilities"] for m in client.get("/api/tags").json()["models"]}
        everything = {m["id"]: m["capabilities"] for m in client.get("/v1/models").json()["data"]}
    assert listed["fake:latest"][:1] == ["completion"] and "embedding" in listed["emb:latest"]
    assert everything["stt"] == ["transcribe"] and "stt:latest" not in listed
    assert all(caps for caps in listed.values())


def test_pull_twice_is_success_twice_and_unreachable_is_5xx(fake_server) -> None:
    gallery = Fixture()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            data = write_gguf(Path(scratch) / "tiny.gguf").read_bytes()
        url = gallery.add("/files/tiny.gguf", data)
        server = fake_server("ok", allowed_download_hosts="127.0.0.1")
        with server.client(timeout=60) as client:
            for _ in range(2):
                r = client.post("/api/pull", json={"model": url, "stream": False})
                assert (r.status_code, r.json()) == (200, {"status": "success"}), r.text
                streamed = client.post("/api/pull", json={"model": url})
                assert [json.loads(line)["status"] for line in streamed.text.splitlines()][-1] == "success"
            assert gallery.state.gets("/files/tiny.gguf") == 1  # downloaded once
            assert "tiny:latest" in {m["name"] for m in client.get("/api/tags").json()["models"]}
            closed = free_port()  # nothing listens there
            r = client.post("/api/pull", json={"model": f"http://127.0.0.1:{closed}/model.yaml", "stream": False})
            assert r.status_code >= 500 and set(r.json()) == {"error"}, r.text
            assert "127.0.0.1" in r.json()["error"]
    finally:
        gallery.close()


# The routes of Ollama 0.32.15's server/routes.go that run locally (push, me, signout and the
# experimental web search and fetch go to ollama.com; /api/status says the cloud is off).
OLLAMA_ROUTES = [
    ("GET", "/"), ("GET", "/api/version"), ("GET", "/api/status"), ("POST", "/api/pull"),
    ("GET", "/api/tags"), ("POST", "/api/show"), ("DELETE", "/api/delete"), ("POST", "/api/create"),
    ("POST", f"/api/blobs/sha256:{'0' * 64}"), ("HEAD", f"/api/blobs/sha256:{'0' * 64}"), ("POST", "/api/copy"),
    ("GET", "/api/ps"), ("POST", "/api/generate"), ("POST", "/api/chat"), ("POST", "/api/embed"),
    ("POST", "/api/embeddings"), ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"),
    ("POST", "/v1/embeddings"), ("GET", "/v1/models"), ("GET", "/v1/models/fake"),
    ("POST", "/v1/responses"), ("POST", "/v1/audio/transcriptions"), ("POST", "/v1/messages"),
]


def test_the_routes_of_the_ollama_version_lokal_claims(fake_server) -> None:
    from lokal.api.ollama.routes import OLLAMA_VERSION

    assert OLLAMA_VERSION == "0.32.15"  # raise it only with Ollama's routes checked again
    server = fake_server("ok")
    with server.client() as client:
        for method, path in OLLAMA_ROUTES:
            r = client.request(method, path, content=b"" if method in ("POST", "DELETE") else None)
            unknown = r.status_code == 404 and "Unknown route" in r.text
            assert not unknown and r.status_code != 405, (method, path, r.status_code, r.text[:200])
