"""Engines in worker processes: a crash costs only that model's running requests.

Real servers, real models (SmolLM2 twice under two names, MiniLM embeddings), real
signals sent to real worker processes: SIGKILL and SIGABRT during a stream, during a
whole answer, during an embedding batch and while idle; an abort while loading (a
GGUF whose layer count fails llama.cpp's GGML_ASSERT, and a signal in the middle of
a good load); a hung worker; a crash loop. Each time the other model answers, the
failed request gets a 500 `engine_stopped`, and the next request to the crashed
model is served by a fresh worker. No worker outlives the server.
"""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LokalServer, place_folder, place_model

pytestmark = pytest.mark.slow  # real loads, kills and reloads: minutes on a busy two-core box

TIMEOUT = 300  # seconds per request: shared machines can be very slow

CHAT = """\
name: {name}
parameters:
  model: SmolLM2-135M-Instruct.Q4_1.gguf
  temperature: 0
context_size: 256
"""

EMBED = """\
name: embed
backend: sentence-transformers
parameters:
  model: bert
embeddings: true
"""


def broken_gguf(target: Path) -> Path:
    """SmolLM2 with llama.block_count = 1000: llama.cpp's loader GGML_ASSERTs (SIGABRT)."""
    data = bytearray(place_model(target.parent, "source.gguf").read_bytes())
    key = b"llama.block_count"
    at = data.index(struct.pack("<Q", len(key)) + key) + 8 + len(key)
    assert struct.unpack_from("<I", data, at)[0] == 4  # a uint32
    struct.pack_into("<I", data, at + 4, 1000)
    target.write_bytes(bytes(data))
    (target.parent / "source.gguf").unlink()
    return target


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("workers") / "models"
    place_model(folder)
    for name in ("chat-a", "chat-b"):
        (folder / f"{name}.yaml").write_text(CHAT.format(name=name))
    place_folder(folder)
    (folder / "embed.yaml").write_text(EMBED)
    broken_gguf(folder / "broken.gguf")
    (folder / "broken.yaml").write_text("name: broken\nparameters:\n  model: broken.gguf\ncontext_size: 256\n")
    return folder


@pytest.fixture
def server(models: Path):  # noqa: ANN201
    # A fresh server per test: crash counts and loaded workers do not carry over.
    # Workers started on demand: the tests count and signal the one a load starts
    # (spare workers, started ahead, have tests of their own: test_spare_workers.py).
    with LokalServer(models, "--parallel-requests", "2", "--spare-workers", "off") as srv:
        yield srv
        stopped_workers = workers(srv.proc.pid)
    srv.proc.wait(30)
    assert not any(alive(pid) for pid in stopped_workers), "workers outlived the server"


# Helpers ---------------------------------------------------------------------


def workers(parent: int) -> list[int]:
    """Worker processes of the server with that pid."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"lokal.engines.worker" in cmdline:
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def kill_and_check_no_orphans(server: LokalServer, pids: list[int]) -> None:
    """SIGKILL the server: its workers (pids) must end within 10 s all the same."""
    server.proc.kill()
    server.proc.wait(30)
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in pids):
        assert time.monotonic() < deadline, "orphaned workers"
        time.sleep(0.05)


def worker_of(server: LokalServer, model: str) -> int:
    """The pid of model's current worker, from the server log."""
    pids = re.findall(rf"model {re.escape(model)} ready in [\d.]+s \(worker (\d+)\)", server.log())
    assert pids, server.log()
    pid = int(pids[-1])
    assert alive(pid)
    return pid


def chat(server: LokalServer, model: str, content: str = "Say hi.", max_tokens: int = 3,
         **extra: Any) -> httpx.Response:
    return httpx.post(f"{server.base}/v1/chat/completions", timeout=TIMEOUT, json={
        "model": model, "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens, **extra})


def long_chat(server: LokalServer, model: str) -> httpx.Response:
    return chat(server, model, "Count from 1 to 300, one number per line.", max_tokens=400)


def embed(server: LokalServer, texts: list[str]) -> httpx.Response:
    return httpx.post(f"{server.base}/v1/embeddings", json={"model": "embed", "input": texts},
                      timeout=TIMEOUT)


def assert_stopped(response: httpx.Response) -> None:
    assert response.status_code == 500, response.text
    error = response.json()["error"]
    assert error["type"] == "engine_stopped", error
    assert "stopped" in error["message"] and "worker" not in error["message"]


def in_background(function: Any, *args: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = function(*args)
        except Exception as exc:  # noqa: BLE001 - examined by the test
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def wait_metric(server: LokalServer, name: str, model: str, at_least: float = 1,
                timeout: float = TIMEOUT, request: threading.Thread | None = None) -> None:
    """Until the server's gauge name for model reaches at_least (while request runs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert request is None or request.is_alive(), "the request ended before it was seen running"
        for line in httpx.get(f"{server.base}/metrics", timeout=30).text.splitlines():
            if line.startswith(name + "{") and f'model="{model}"' in line \
                    and float(line.rsplit(" ", 1)[1]) >= at_least:
                return
        time.sleep(0.05)
    raise AssertionError(f"{name} of {model} never reached {at_least}")


def wait_busy(server: LokalServer, model: str, request: threading.Thread) -> None:
    wait_metric(server, "lokal_requests_running", model, request=request)


def restarts(server: LokalServer) -> int:
    return int(httpx.get(f"{server.base}/readyz", timeout=30).json()["worker_restarts"])


# Crashes while serving -----------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGABRT], ids=["SIGKILL", "SIGABRT"])
def test_crash_during_a_stream(server: LokalServer, sig: signal.Signals) -> None:
    assert chat(server, "chat-a").status_code == 200
    assert chat(server, "chat-b").status_code == 200
    pid = worker_of(server, "chat-a")
    events: list[Any] = []
    with httpx.stream("POST", f"{server.base}/v1/chat/completions", timeout=TIMEOUT, json={
            "model": "chat-a", "stream": True, "max_tokens": 400,
            "messages": [{"role": "user", "content": "Count from 1 to 300, one number per line."}]}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            events.append(line[6:] if line[6:] == "[DONE]" else json.loads(line[6:]))
            if len(events) == 2:
                os.kill(pid, sig)
                other = chat(server, "chat-b")  # the other model answers meanwhile
                assert other.status_code == 200, other.text
    assert events[-1] == "[DONE]"
    error = events[-2]["error"]
    assert error["type"] == "engine_stopped" and error["code"] == 500, events[-2]
    log = server.wait_log(f"was killed by {sig.name}")
    assert "last engine log lines" in log
    again = chat(server, "chat-a")
    assert again.status_code == 200, again.text
    assert worker_of(server, "chat-a") != pid
    assert restarts(server) >= 1
    assert 'lokal_worker_restarts_total{model="chat-a"' in httpx.get(f"{server.base}/metrics").text


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGABRT], ids=["SIGKILL", "SIGABRT"])
def test_crash_during_a_whole_answer(server: LokalServer, sig: signal.Signals) -> None:
    assert chat(server, "chat-a").status_code == 200
    assert chat(server, "chat-b").status_code == 200
    pid = worker_of(server, "chat-a")
    thread, out = in_background(long_chat, server, "chat-a")
    wait_busy(server, "chat-a", thread)
    time.sleep(0.3)
    os.kill(pid, sig)
    thread.join(TIMEOUT)
    assert_stopped(out["result"])
    assert chat(server, "chat-b").status_code == 200
    assert chat(server, "chat-a").status_code == 200


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGABRT], ids=["SIGKILL", "SIGABRT"])
def test_crash_during_an_embedding_batch(server: LokalServer, sig: signal.Signals) -> None:
    assert embed(server, ["warm up"]).status_code == 200
    assert chat(server, "chat-b").status_code == 200
    pid = worker_of(server, "embed")
    texts = [f"sentence number {i} about a worker process that is about to die" for i in range(2000)]
    thread, out = in_background(embed, server, texts)
    wait_busy(server, "embed", thread)
    time.sleep(0.3)
    os.kill(pid, sig)
    thread.join(TIMEOUT)
    assert_stopped(out["result"])
    assert chat(server, "chat-b").status_code == 200
    again = embed(server, ["hello", "world"])
    assert again.status_code == 200 and len(again.json()["data"]) == 2


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGABRT], ids=["SIGKILL", "SIGABRT"])
def test_crash_while_idle(server: LokalServer, sig: signal.Signals) -> None:
    assert chat(server, "chat-a").status_code == 200
    assert chat(server, "chat-b").status_code == 200
    pid = worker_of(server, "chat-a")
    os.kill(pid, sig)
    log = server.wait_log(f"was killed by {sig.name}")
    assert "with 0 request(s) running" in log
    assert chat(server, "chat-b").status_code == 200
    assert chat(server, "chat-a").status_code == 200
    assert worker_of(server, "chat-a") != pid


def test_waiting_requests_run_on_a_fresh_worker(models: Path) -> None:
    """With one slot, a second request waits; the crash ends the first, the second is served."""
    with LokalServer(models, "--parallel-requests", "1") as server:
        assert chat(server, "chat-a").status_code == 200
        pid = worker_of(server, "chat-a")
        first, first_out = in_background(long_chat, server, "chat-a")
        wait_busy(server, "chat-a", first)
        second, second_out = in_background(chat, server, "chat-a")
        wait_metric(server, "lokal_requests_waiting", "chat-a", request=second)
        os.kill(pid, signal.SIGKILL)
        first.join(TIMEOUT)
        second.join(TIMEOUT)
        assert_stopped(first_out["result"])
        assert second_out["result"].status_code == 200, second_out["result"].text


# Loads that abort, hangs, crash loops ------------------------------------------------


def test_an_engine_abort_at_load_costs_one_request_and_then_a_crash_loop_marks_it_failed(
        server: LokalServer) -> None:
    assert chat(server, "chat-b").status_code == 200
    for attempt in range(3):
        response = chat(server, "broken")
        assert response.status_code == 500, response.text
        message = response.json()["error"]["message"]
        assert "SIGABRT while loading" in message and "GGML_ASSERT" in message, message
        assert "/" not in message.split("GGML_ASSERT")[0].split("broken.gguf")[-1]
        assert chat(server, "chat-b").status_code == 200  # the other model keeps answering
    assert "crashed 3 times" in message
    log = server.log()
    assert "GGML_ASSERT" in log and "last engine log lines" in log
    # Failed until reloaded: refused without a load, and listed as failed.
    started = log.count("loading model broken")
    refused = chat(server, "broken")
    assert refused.status_code == 500 and refused.json()["error"]["type"] == "model_failed"
    assert server.log().count("loading model broken") == started
    listed = {m["id"]: m for m in httpx.get(f"{server.base}/v1/models").json()["data"]}
    assert listed["broken"]["status"] == "failed" and "crashed 3 times" in listed["broken"]["error"]
    assert "status" not in listed["chat-b"]
    assert "broken" in httpx.get(f"{server.base}/readyz").json()["failed_models"]


def test_a_signal_during_a_good_load_fails_that_request_only(server: LokalServer) -> None:
    assert chat(server, "chat-b").status_code == 200
    known = set(workers(server.proc.pid))
    thread, out = in_background(chat, server, "chat-a")
    deadline = time.monotonic() + 60
    while not (new := set(workers(server.proc.pid)) - known):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(new.pop(), signal.SIGABRT)
    thread.join(TIMEOUT)
    response = out["result"]
    assert response.status_code == 500 and "while loading" in response.json()["error"]["message"]
    assert chat(server, "chat-b").status_code == 200
    assert chat(server, "chat-a").status_code == 200


def test_a_hung_worker_is_killed_and_replaced(models: Path) -> None:
    with LokalServer(models, "--watchdog-busy-timeout", "20") as server:
        assert chat(server, "chat-a").status_code == 200
        pid = worker_of(server, "chat-a")
        os.kill(pid, signal.SIGSTOP)  # hangs: alive, silent
        try:
            response = chat(server, "chat-a")
        finally:
            if alive(pid):
                os.kill(pid, signal.SIGCONT)
        assert response.status_code == 500, response.text
        assert "WATCHDOG_BUSY_TIMEOUT" in response.json()["error"]["message"]
        server.wait_log("was killed by lokal (no progress within WATCHDOG_BUSY_TIMEOUT)")
        assert not alive(pid)
        assert chat(server, "chat-a").status_code == 200
        assert worker_of(server, "chat-a") != pid


# No orphans -------------------------------------------------------------------------


def test_no_worker_survives_a_sigkill_of_the_server(models: Path) -> None:
    server = LokalServer(models, "--spare-workers", "off")
    try:
        assert chat(server, "chat-a").status_code == 200
        assert embed(server, ["x"]).status_code == 200
        pids = workers(server.proc.pid)
        assert len(pids) == 2
        kill_and_check_no_orphans(server, pids)
    finally:
        server.stop()
