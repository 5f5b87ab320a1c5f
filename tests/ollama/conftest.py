"""One lokal server for the Ollama tests: SmolLM2 as gpt-3.5-turbo, all-MiniLM-L6-v2 as
all-minilm, an API key (Ollama clients send it as Bearer), and the second listener
(--ollama-address) that apps hard-coding Ollama's port talk to."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import yaml

from tests.conftest import CHAT_FILE, LokalServer, place_folder, place_model, smollm_gguf
from tests.ports import free_port
from tests.install.conftest import Fixture, sha

KEY = "sk-ollama-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = "gpt-3.5-turbo"
EMBED = "all-minilm"


@dataclass
class Ollama:
    server: LokalServer
    base: str  # the main address
    ollama: str  # the --ollama-address listener
    models: Path
    gallery: Fixture  # a loopback gallery serving SmolLM2 as `smol` for /api/pull


@pytest.fixture(scope="package")
def ollama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ollama]:
    models = tmp_path_factory.mktemp("ollama") / "models"
    place_model(models)
    place_folder(models, "minilm")
    (models / "gpt-3.5-turbo.yaml").write_text(
        f"name: {CHAT}\nparameters:\n  model: {CHAT_FILE}\ncontext_size: 2048\n")
    (models / "all-minilm.yaml").write_text(f"name: {EMBED}\nparameters:\n  model: minilm\n")
    gallery = Fixture()
    data = smollm_gguf().read_bytes()
    url = gallery.add("/smol/smol.gguf", data)
    gallery.add("/index.yaml", yaml.safe_dump([{
        "name": "smol", "description": "SmolLM2",
        "config_file": {"backend": "llama-cpp", "context_size": 512, "parameters": {"model": "smol.gguf"}},
        "files": [{"filename": "smol.gguf", "uri": url, "sha256": sha(data)}]}]).encode())
    env = {"API_KEY": KEY, "ALLOWED_DOWNLOAD_HOSTS": "127.0.0.1",
           "GALLERIES": f'[{{"name": "test", "url": "{gallery.base}/index.yaml"}}]'}
    port = free_port()
    try:
        with LokalServer(models, "--ollama-address", f"127.0.0.1:{port}", "--preload-models", CHAT,
                         env=env) as server:
            server.wait_ready(120)
            yield Ollama(server, server.base, f"http://127.0.0.1:{port}", models, gallery)
    finally:
        gallery.close()


@pytest.fixture
def client(ollama_server: Ollama):  # noqa: ANN201 - ollama is a test extra
    import ollama

    return ollama.Client(host=ollama_server.ollama, headers=AUTH, timeout=120)
