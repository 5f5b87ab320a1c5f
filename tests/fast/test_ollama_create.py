"""Open WebUI's "upload a GGUF" replayed against lokal: the raw file to
`POST /api/blobs/sha256:<hex>` (larger than the server's body limit), then `POST /api/create`
(Open WebUI's `{"name", "modelfile": "FROM @sha256:..."}` form and Ollama's `files` form);
and a model created from another with its own system prompt, parameters and messages."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import yaml

from tests.fakeengine import write_gguf

MB = 1 << 20


def gguf_bytes(size: int = 2 * MB) -> bytes:
    """A GGUF header padded to size bytes (lokal reads the header only)."""
    with tempfile.TemporaryDirectory() as scratch:
        data = write_gguf(Path(scratch) / "up.gguf", context_length=2048).read_bytes()
    return data + b"\0" * (size - len(data))


def chunks(data: bytes, size: int = 256 * 1024):
    for start in range(0, len(data), size):
        yield data[start:start + size]


def test_open_webui_upload_flow(fake_server) -> None:
    server = fake_server("Hello from the upload.", upload_limit=1)  # 1 MB body limit; the file is 2 MB
    data = gguf_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs = server.folder / ".lokal" / "blobs"
    with server.client(timeout=30) as client:
        assert client.head(f"/api/blobs/{digest}").status_code == 404
        # A body that does not match its digest: 400, and nothing is left behind.
        bad = client.post(f"/api/blobs/sha256:{'0' * 64}", content=chunks(data))
        assert bad.status_code == 400 and "digest mismatch" in bad.json()["error"], bad.text
        assert not any(blobs.iterdir())
        # Open WebUI's backend streams the file (requests with data=file): past the body limit.
        r = client.post(f"/api/blobs/{digest}", content=data)
        assert r.status_code == 201, r.text
        assert client.post(f"/api/blobs/{digest}", content=data).status_code == 200  # here already
        assert client.head(f"/api/blobs/{digest}").status_code == 200
        assert client.post("/v1/chat/completions", content=b"x" * (2 * MB)).status_code == 413  # elsewhere
        assert client.head("/api/blobs/sha256:nothex").status_code == 400

        # Open WebUI's create: the Modelfile form, FROM the blob.
        r = client.post("/api/create", json={"name": "uploaded:latest",
                                             "modelfile": f"FROM @{digest}\nSYSTEM \"You are terse.\"\n"})
        assert r.status_code == 200, r.text
        statuses = [json.loads(line)["status"] for line in r.text.splitlines()]
        assert statuses[-1] == "success" and f"using existing layer {digest}" in statuses
        listed = {m["name"] for m in client.get("/api/tags").json()["models"]}
        assert "uploaded:latest" in listed
        config = yaml.safe_load((server.folder / "uploaded.yaml").read_text())
        assert config["parameters"]["model"] == "uploaded.gguf" and config["system_prompt"] == "You are terse."
        assert (server.folder / "uploaded.gguf").read_bytes() == data
        r = client.post("/api/chat", json={"model": "uploaded", "stream": False,
                                           "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200 and r.json()["message"]["content"] == "Hello from the upload.", r.text
        assert server.last.body["messages"][0] == {"role": "system", "content": "You are terse."}

        # Ollama's own form: files by name; created again under the same name: replaced.
        r = client.post("/api/create", json={"model": "uploaded", "files": {"uploaded.gguf": digest},
                                             "stream": False})
        assert (r.status_code, r.json()) == (200, {"status": "success"}), r.text
        assert "system_prompt" not in yaml.safe_load((server.folder / "uploaded.yaml").read_text())
        # Deleting it removes its file; the blob stays (as Ollama keeps its blobs).
        assert client.request("DELETE", "/api/delete", json={"model": "uploaded"}).status_code == 200
        assert not (server.folder / "uploaded.gguf").exists()
        assert client.head(f"/api/blobs/{digest}").status_code == 200


def test_create_from_a_model_with_system_parameters_and_messages(fake_server) -> None:
    server = fake_server("ok")
    with server.client() as client:
        r = client.post("/api/create", json={
            "model": "terse", "from": "fake", "system": "Be terse.", "stream": False,
            "parameters": {"temperature": 0.2, "num_predict": 7, "stop": ["<end>"], "num_ctx": 1024},
            "messages": [{"role": "user", "content": "Who are you?"},
                         {"role": "assistant", "content": "A terse helper."}]})
        assert r.status_code == 200, r.text
        show = client.post("/api/show", json={"model": "terse"}).json()
        assert show["system"] == "Be terse." and show["messages"][1]["content"] == "A terse helper."
        assert "num_ctx" in show["parameters"] and "<end>" in show["parameters"]
        r = client.post("/api/chat", json={"model": "terse", "stream": False,
                                           "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200, r.text
        body = server.last.body
        assert [(m["role"], m["content"]) for m in body["messages"]] == [
            ("system", "Be terse."), ("user", "Who are you?"), ("assistant", "A terse helper."), ("user", "hi")]
        assert body["temperature"] == 0.2 and body["max_tokens"] == 7 and "<end>" in body["stop"]


def test_create_refuses_what_it_cannot_mean(fake_server) -> None:
    server = fake_server("ok")
    data = gguf_bytes(4096)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with server.client() as client:
        assert client.post(f"/api/blobs/{digest}", content=data).status_code == 201
        cases = [
            ({"model": "x", "from": "fake", "template": "{{ .Prompt }}"}, "template"),
            ({"model": "x", "from": "fake", "adapters": {"a.gguf": digest}}, "LoRA"),
            ({"model": "x", "from": "fake", "parameters": {"mirostat": 2}}, "mirostat"),
            ({"model": "x", "from": "fake", "files": {"x.gguf": digest}}, "either"),
            ({"model": "x"}, "neither 'from' or 'files' was specified"),
            ({"model": "x", "files": {"x.gguf": "sha256:" + "1" * 64}}, "was not uploaded"),
            ({"model": "x", "files": {"../x.gguf": digest}}, "GGUF"),
            ({"model": "x", "from": "nope"}, "not found"),
        ]
        for body, words in cases:
            r = client.post("/api/create", json=dict(body, stream=False))
            assert r.status_code in (400, 404) and words in r.json()["error"], (body, r.text)
        # A model that was not made by /api/create is not replaced.
        r = client.post("/api/create", json={"model": "fake", "files": {"other.gguf": digest}})
        assert r.status_code == 409 and "/api/delete" in r.json()["error"]
        assert not (server.folder / "x.yaml").exists() and not (server.folder / "other.gguf").exists()
