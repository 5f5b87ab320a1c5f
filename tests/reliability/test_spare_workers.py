"""Spare engine workers: one per kind of engine the models need, started ahead with its
libraries imported, handed the next load of that kind, and kept within the memory budget."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx

from lokal.engines.base import LoadOptions
from lokal.engines.spares import SpareWorkers
from lokal.formats.modelfile import read_gguf
from lokal.models.memory import MIB, PROCESS_OVERHEAD, estimate
from tests.api.test_transcriptions import place_whisper
from tests.conftest import LokalServer, place_model


class Fake:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.running = True

    def alive(self) -> bool:
        return self.running

    def stop(self) -> None:
        self.running = False


def test_one_spare_per_kind_handed_out_once_and_shed_on_demand() -> None:
    made: list[Fake] = []

    def spawn(kind: str, background: bool) -> Fake:
        made.append(Fake(len(made) + 1))
        return made[-1]

    spares = SpareWorkers(spawn)
    spares.want({"llama-cpp", "onnx"})
    assert spares.refill(lambda kind: kind != "onnx") == ["llama-cpp"]  # onnx does not fit
    assert spares.refill() == ["onnx"] and spares.refill() == []  # one per kind
    first = spares.take("llama-cpp")
    assert first is made[0] and spares.take("llama-cpp") is None and spares.handed_out == 1
    assert spares.refill() == ["llama-cpp"]
    made[2].running = False  # a spare that died while it waited is not handed out
    assert spares.take("llama-cpp") is None and not made[2].alive()
    assert spares.shed(keep="onnx") == [] and spares.held() == ["onnx"]
    spares.want({"whisper"})  # the folder changed: the onnx spare is no longer wanted
    assert not made[1].alive() and spares.held() == []
    spares.refill()
    spares.close()
    assert not any(p.alive() for p in made[3:])
    assert spares.refill() == []  # closed: nothing starts again


def _spares(server: LokalServer) -> dict[str, dict]:
    body = httpx.get(f"{server.base}/lokal/models", timeout=30).json()
    return {item["engine"]: item for item in body["spare_workers"]}


def _wait_spares(server: LokalServer, kinds: set[str], timeout: float = 120) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = _spares(server)
        if set(found) >= kinds or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_the_first_load_takes_the_spare_and_an_unload_brings_one_back(tmp_path: Path) -> None:
    models = tmp_path / "models"
    place_model(models, "smol.gguf")
    (models / "smol.yaml").write_text("name: smol\nparameters:\n  model: smol.gguf\ncontext_size: 512\n")
    place_whisper(models, "whisper-tiny")
    (models / "whisper.yaml").write_text("name: whisper-1\nbackend: whisper\nparameters:\n  model: whisper-tiny\n")
    with LokalServer(models, "--log-level", "debug") as server:
        before = _wait_spares(server, {"llama-cpp", "whisper"})
        assert set(before) == {"llama-cpp", "whisper"}
        assert all(item["rss_bytes"] and item["rss_bytes"] > 10 * MIB for item in before.values())
        r = httpx.post(f"{server.base}/v1/chat/completions", timeout=300, json={
            "model": "smol", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
        assert r.status_code == 200, r.text
        log = server.log()
        ready = re.search(r"worker (\d+) ready in [\d.]+s \(a spare, started ahead\)", log)
        assert ready is not None and int(ready.group(1)) == before["llama-cpp"]["pid"], log[-2000:]
        # No other llama.cpp model waits for a first load: no new spare of that kind; whisper's stays.
        assert set(_spares(server)) == {"whisper"}
        assert _spares(server)["whisper"]["pid"] == before["whisper"]["pid"]
        httpx.post(f"{server.base}/lokal/models/smol/unload", timeout=60).raise_for_status()
        after = _wait_spares(server, {"llama-cpp", "whisper"})
        assert "llama-cpp" in after and after["llama-cpp"]["pid"] != before["llama-cpp"]["pid"]  # a new one


def test_spare_workers_off(tmp_path: Path) -> None:
    models = tmp_path / "models"
    place_model(models, "smol.gguf")
    (models / "smol.yaml").write_text("name: smol\nparameters:\n  model: smol.gguf\ncontext_size: 512\n")
    with LokalServer(models, "--spare-workers", "off") as server:
        assert _spares(server) == {}
        r = httpx.post(f"{server.base}/v1/chat/completions", timeout=300, json={
            "model": "smol", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
        assert r.status_code == 200, r.text
        assert "a spare, started ahead" not in server.log() and _spares(server) == {}


def test_spares_give_their_memory_back_before_a_load_is_refused(tmp_path: Path) -> None:
    models = tmp_path / "models"
    gguf = place_model(models, "smol.gguf")
    (models / "smol.yaml").write_text("name: smol\nparameters:\n  model: smol.gguf\ncontext_size: 8192\n")
    place_whisper(models, "whisper-tiny")
    (models / "whisper.yaml").write_text("name: whisper-1\nbackend: whisper\nparameters:\n  model: whisper-tiny\n")
    need = estimate("llama-cpp", LoadOptions(model_path=gguf, context_size=8192, threads=2, parallel=1,
                                             gguf=read_gguf(gguf))).total
    whisper, llama = PROCESS_OVERHEAD["whisper"], PROCESS_OVERHEAD["llama-cpp"]
    limit = need + 3 * whisper // 4  # both spares start (each leaves twice its size free) ...
    assert limit - llama >= 2 * whisper and limit >= 2 * llama
    assert need > limit - whisper  # ... but the model fits only once the whisper spare is gone
    with LokalServer(models, "--parallel-requests", "1", "--memory-limit", str(limit), "--log-level", "debug") as server:
        assert set(_wait_spares(server, {"llama-cpp", "whisper"})) == {"llama-cpp", "whisper"}
        r = httpx.post(f"{server.base}/v1/chat/completions", timeout=300, json={
            "model": "smol", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
        assert r.status_code == 200, r.text
        log = server.log()
        assert "stopped spare worker(s) whisper to free memory" in log
        assert "a spare, started ahead" in log  # the load still got the llama.cpp spare
        assert "whisper" not in _spares(server)  # and no whisper spare comes back: it does not fit


def test_a_dead_spare_is_not_given_a_load_and_no_spare_outlives_the_server(tmp_path: Path) -> None:
    import os
    import signal

    from tests.reliability.test_workers import kill_and_check_no_orphans, workers

    models = tmp_path / "models"
    place_model(models, "smol.gguf")
    for name in ("a", "b"):
        (models / f"{name}.yaml").write_text(f"name: {name}\nparameters:\n  model: smol.gguf\ncontext_size: 512\n")
    server = LokalServer(models)
    try:
        spare = _wait_spares(server, {"llama-cpp"})["llama-cpp"]["pid"]
        os.kill(spare, signal.SIGKILL)  # the OOM killer, say
        r = httpx.post(f"{server.base}/v1/chat/completions", timeout=300, json={
            "model": "a", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
        assert r.status_code == 200, r.text  # loaded on a worker of its own
        assert f"spare llama-cpp worker {spare} had ended" in server.log()
        # b still waits for its first load: a new spare is there for it.
        assert _wait_spares(server, {"llama-cpp"})["llama-cpp"]["pid"] != spare
        pids = workers(server.proc.pid)
        assert len(pids) == 2  # a's worker and the spare
        kill_and_check_no_orphans(server, pids)
    finally:
        server.stop()
