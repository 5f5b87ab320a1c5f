"""Through a running server: a model installed by /models/apply answers chat at once, no restart."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import yaml

from tests.conftest import LokalServer, smollm_gguf
from tests.install.conftest import Fixture, sha


def test_an_installed_model_answers_chat_without_a_restart(fixture: Fixture, tmp_path: Path) -> None:
    data = smollm_gguf().read_bytes()
    url = fixture.add("/smol/SmolLM2-135M-Instruct.Q4_1.gguf", data)
    fixture.add("/index.yaml", yaml.safe_dump([{
        "name": "smol", "description": "SmolLM2",
        "config_file": {"backend": "llama-cpp", "context_size": 512, "parameters": {"model": "smol.gguf"}},
        "files": [{"filename": "smol.gguf", "uri": url, "sha256": sha(data)}]}]).encode())
    models = tmp_path / "models"
    models.mkdir()
    env = {"ALLOWED_DOWNLOAD_HOSTS": "127.0.0.1",
           "GALLERIES": f'[{{"name": "test", "url": "{fixture.base}/index.yaml"}}]'}
    with LokalServer(models, env=env) as server, httpx.Client(base_url=server.base, timeout=60) as http:
        assert http.get("/v1/models").json()["data"] == []
        applied = http.post("/models/apply", json={"id": "test@smol", "name": "gpt-4o-mini"})
        assert applied.status_code == 200, applied.text + server.log()
        job = applied.json()
        deadline = time.monotonic() + 60
        while not (status := http.get(f"/models/jobs/{job['uuid']}").json())["processed"]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert status["error"] is None, status
        reply = http.post("/v1/chat/completions", json={
            "model": "gpt-4o-mini", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]})
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"]
        assert http.post("/models/delete/gpt-4o-mini").status_code == 200
        assert http.post("/v1/chat/completions", json={
            "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}).status_code == 404
