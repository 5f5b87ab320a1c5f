"""/api/pull (on the install job system, from a loopback gallery), /api/copy, /api/delete."""

from __future__ import annotations

import httpx
import ollama
import pytest

from tests.ollama.conftest import AUTH, CHAT, CHAT_FILE, Ollama


def test_pull_streams_progress_then_serves(client: ollama.Client, ollama_server: Ollama) -> None:
    lines = list(client.pull("smol", stream=True))
    statuses = [line.status for line in lines]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    downloading = [line for line in lines if line.status == "pulling smol.gguf"]
    assert downloading and all(line.digest == "smol.gguf" for line in downloading)
    size = (ollama_server.models / CHAT_FILE).stat().st_size
    assert downloading[-1].total == size and downloading[-1].completed == size
    completed = [line.completed or 0 for line in downloading]
    assert completed == sorted(completed)
    assert statuses.index("verifying sha256 digest") > statuses.index("pulling smol.gguf")
    assert (ollama_server.models / "smol.gguf").stat().st_size == size
    # Served at once, by the name pulled, with :latest implied.
    assert "smol:latest" in {m.model for m in client.list().models}
    assert client.generate("smol:latest", "Hi", options={"num_predict": 2}).done
    # Pulling what is here already: success at once (nothing downloaded again).
    hits = ollama_server.gallery.state.gets("/smol/smol.gguf")
    assert client.pull("smol:latest").status == "success"
    assert [p.status for p in client.pull("smol", stream=True)] == ["pulling manifest", "success"]
    assert ollama_server.gallery.state.gets("/smol/smol.gguf") == hits


def test_pull_errors(client: ollama.Client, ollama_server: Ollama) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.pull("no-such-entry", stream=True)
        list(client.pull("no-such-entry", stream=True))
    assert info.value.status_code == 404
    got = httpx.post(ollama_server.ollama + "/api/pull", json={}, headers=AUTH)
    assert got.status_code == 400 and set(got.json()) == {"error"}
    # The management routes need the key like every other.
    assert httpx.post(ollama_server.ollama + "/api/pull", json={"model": "smol"}).status_code == 401


def test_copy_then_delete(client: ollama.Client, ollama_server: Ollama) -> None:
    client.copy(CHAT, "backup")
    names = {m.model for m in client.list().models}
    assert "backup:latest" in names and f"{CHAT}:latest" in names
    assert client.show("backup").capabilities == ["completion", "tools"]
    assert client.chat("backup", messages=[{"role": "user", "content": "hi"}],
                       options={"num_predict": 2}).done
    with pytest.raises(ollama.ResponseError) as info:
        client.copy(CHAT, "backup:latest")
    assert info.value.status_code == 409
    with pytest.raises(ollama.ResponseError) as info:
        client.copy("no-such-model", "other")
    assert info.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as info:
        client.copy(CHAT, "../escape")
    assert info.value.status_code == 400
    client.delete("backup:latest")
    assert "backup:latest" not in {m.model for m in client.list().models}
    assert (ollama_server.models / CHAT_FILE).exists()  # still used by gpt-3.5-turbo
    assert not (ollama_server.models / "backup.yaml").exists()
    with pytest.raises(ollama.ResponseError) as info:
        client.delete("backup")
    assert info.value.status_code == 404
    assert client.chat(CHAT, messages=[{"role": "user", "content": "hi"}], options={"num_predict": 2}).done


def test_delete_a_pulled_model(client: ollama.Client, ollama_server: Ollama) -> None:
    if "smol:latest" not in {m.model for m in client.list().models}:
        assert client.pull("smol").status == "success"
    client.delete("smol")
    assert "smol:latest" not in {m.model for m in client.list().models}
    assert not (ollama_server.models / "smol.gguf").exists()
