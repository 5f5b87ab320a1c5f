"""The small image, run as a user would: a published loopback port, a models volume, the
engine's health check, and `stop` (SIGTERM) while a stream is running."""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import place_model
from tests.ports import free_port
from tests.container.conftest import Engine, Image, wait_ready

CHAT = "smol"
EMBED = "minilm"
GRACE = 120  # SHUTDOWN_GRACE in the container; `stop` waits a little longer


@dataclass
class Running:
    engine: Engine
    name: str
    base: str

    def logs(self) -> str:
        result = self.engine("logs", self.name, check=False)
        return result.stdout + result.stderr

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.base}/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, minilm_gguf: Path) -> Path:
    """A models folder: SmolLM2 for chat, all-MiniLM-L6-v2 as a GGUF for embeddings."""
    folder = tmp_path_factory.mktemp("container") / "models"
    place_model(folder, "smol.gguf")
    try:
        os.link(minilm_gguf, folder / "minilm.gguf")
    except OSError:
        shutil.copyfile(minilm_gguf, folder / "minilm.gguf")
    (folder / "smol.yaml").write_text(f"name: {CHAT}\nparameters:\n  model: smol.gguf\n  temperature: 0\n"
                                      "context_size: 2048\n")
    (folder / "minilm.yaml").write_text(f"name: {EMBED}\nparameters:\n  model: minilm.gguf\n"
                                        "embeddings: true\ncontext_size: 256\n")
    for path in [folder, *folder.iterdir()]:  # the image's user (uid 1000) reads them
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


@pytest.fixture(scope="module")
def lokal(engine: Engine, image: Image, models: Path) -> Iterator[Running]:
    name = f"lokal-test-{os.getpid()}"
    port = free_port()
    engine.remove(name)
    engine("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080",
           "-v", f"{models}:/models:ro", "-e", f"PRELOAD_MODELS={CHAT},{EMBED}", "-e", "THREADS=2",
           "-e", f"SHUTDOWN_GRACE={GRACE}", image.name)
    running = Running(engine, name, f"http://127.0.0.1:{port}")
    try:
        wait_ready(running.base, 300, running.logs)
        yield running
    finally:
        engine.remove(name)


def test_the_small_image_is_well_under_a_gigabyte(image: Image) -> None:
    assert image.size < 1_000_000_000, f"{image.size / 1e6:.0f} MB"


def test_ready_and_the_engine_reports_healthy(lokal: Running) -> None:
    body = httpx.get(f"{lokal.base}/readyz", timeout=10).json()
    assert body["status"] == "ready" and "failed_models" not in body
    # No systemd here to run the check on its interval: run it once, as the timer would.
    run = lokal.engine("healthcheck", "run", lokal.name, check=False) if lokal.engine.name == "podman" else None
    assert run is None or run.returncode == 0, run.stdout + run.stderr
    state = lokal.engine.inspect(lokal.name)["State"]
    health = state.get("Health") or state.get("Healthcheck")
    if lokal.engine.name == "docker":  # Docker runs it itself, every 30 s
        deadline = time.monotonic() + 90
        while health["Status"] != "healthy" and time.monotonic() < deadline:
            time.sleep(2)
            state = lokal.engine.inspect(lokal.name)["State"]
            health = state["Health"]
    assert health["Status"] == "healthy", health


def test_chat_and_embeddings_answer(lokal: Running) -> None:
    client = lokal.client()
    reply = client.chat.completions.create(model=CHAT, max_tokens=8,
                                           messages=[{"role": "user", "content": "Say hello."}])
    assert reply.choices[0].message.content
    vectors = [d.embedding for d in client.embeddings.create(
        model=EMBED, input=["a cat sleeps on the sofa", "a kitten naps on the couch",
                            "interest rates rose again"]).data]
    assert [len(v) for v in vectors] == [384, 384, 384]

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    # A real sentence embedding: the paraphrase is nearer than the unrelated sentence.
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.2


def test_runs_as_a_non_root_user(engine: Engine, lokal: Running, image: Image) -> None:
    assert engine.inspect(image.name)["Config"]["User"] == "lokal"
    top = engine("top", lokal.name, "user", "args").stdout.splitlines()[1:] if engine.name == "podman" \
        else engine("top", lokal.name, "-o", "user,args").stdout.splitlines()[1:]
    users = {line.split()[0] for line in top if line.strip()}
    assert users and "root" not in users and users <= {"lokal", "1000"}, top
    assert any("lokal serve" in line for line in top), top
    assert any("lokal.engines.worker" in line for line in top), top  # the engine workers too
    ids = engine("exec", lokal.name, "python3", "-c", "import os; print(os.getuid(), os.getgid())").stdout.split()
    assert ids == ["1000", "1000"]


def test_stop_drains_a_running_stream_and_exits_0(engine: Engine, lokal: Running) -> None:
    """`stop` sends SIGTERM: the stream that is running ends as it would have (its
    finish_reason, [DONE]); the server then exits with status 0. Runs last: it stops the
    module's container."""
    lines: list[str] = []
    first = threading.Event()
    failed: list[BaseException] = []

    def stream() -> None:
        try:
            with httpx.stream("POST", f"{lokal.base}/v1/chat/completions", timeout=GRACE + 60, json={
                    "model": CHAT, "max_tokens": 24, "ignore_eos": True, "stream": True,
                    "messages": [{"role": "user", "content": "Tell a long story."}]}) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        lines.append(line)
                        first.set()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failed.append(exc)
            first.set()

    reader = threading.Thread(target=stream)
    reader.start()
    assert first.wait(120), lokal.logs()
    stop = engine("stop", "-t", str(GRACE + 30), lokal.name, timeout=GRACE + 90)
    reader.join(30)
    assert not failed, failed
    assert lines[-1] == "data: [DONE]", lines[-3:]
    last = json.loads(lines[-2][len("data: "):])  # not the error event of a cut stream
    assert last["choices"][0]["finish_reason"] == "length", last
    state = engine.inspect(lokal.name)["State"]
    assert state["ExitCode"] == 0, (stop.stderr, lokal.logs()[-3000:])
    logs = lokal.logs()
    assert "shutting down: finishing running requests" in logs and "Finished server process" in logs
