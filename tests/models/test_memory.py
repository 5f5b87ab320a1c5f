"""The memory budget: the estimate against real loads, 507 before a load that cannot fit,
and LRU eviction to make room."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from lokal.engines.base import LoadOptions
from lokal.formats.modelfile import read_gguf
from lokal.models.memory import MIB, MemoryBudget, estimate
from tests.conftest import CHAT_FILE, LokalServer, place_model, smollm_gguf

TOLERANCE = 0.25  # the estimate is within 25% of the worker's measured RSS after a request


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def options(context: int, parallel: int) -> LoadOptions:
    return LoadOptions(model_path=smollm_gguf(), context_size=context, threads=2, parallel=parallel,
                       gguf=read_gguf(smollm_gguf()))


def test_the_kv_cache_follows_the_models_attention_shape() -> None:
    # SmolLM2-135M: 30 layers, 3 KV heads of 64 wide, f16: 23,040 bytes per token.
    small, big = estimate("llama-cpp", options(512, 1)), estimate("llama-cpp", options(4096, 4))
    assert small.kv_cache == 512 * 30 * 3 * (64 + 64) * 2
    assert big.kv_cache == 32 * small.kv_cache  # 8x the context, 4x the slots
    assert big.weights == smollm_gguf().stat().st_size
    embedding = estimate("llama-cpp", LoadOptions(model_path=smollm_gguf(), context_size=512, threads=2,
                                                  parallel=4, embeddings=True))
    assert embedding.kv_cache == small.kv_cache  # one unified pool, not one per slot


@pytest.mark.parametrize("context,parallel", [(512, 1), (4096, 4)])
def test_the_estimate_matches_a_real_load(context: int, parallel: int) -> None:
    from lokal.engines.worker.client import WorkerFactory

    opts = options(context, parallel)
    engine = WorkerFactory()("llama-cpp", opts)
    try:
        engine.chat({"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4},
                    lambda chunk: False)
        measured = rss(engine.pid)  # type: ignore[attr-defined]
    finally:
        engine.close()
    expected = estimate("llama-cpp", opts).total
    assert abs(measured - expected) <= TOLERANCE * measured, (measured / MIB, expected / MIB)


def test_free_memory_is_the_limit_less_what_is_loaded_and_never_more_than_the_machine_has() -> None:
    budget = MemoryBudget(limit=1 << 40, margin=0)
    free, why = budget.free(used=0)
    assert free <= budget.available() and "available" in why  # type: ignore[operator]
    tight = MemoryBudget(limit=500 * MIB, margin=0)
    assert tight.free(used=200 * MIB)[0] == 300 * MIB


def test_a_kv_cache_that_cannot_fit_is_refused_with_507_before_loading(tmp_path: Path) -> None:
    models = tmp_path / "models"
    place_model(models)
    # 8192 tokens (all SmolLM2 was trained on) x 4 slots of f16 KV cache is 720 MiB.
    (models / "huge.yaml").write_text(f"name: huge\nparameters:\n  model: {CHAT_FILE}\n"
                                      "context_size: 8192\n")
    with LokalServer(models, "--parallel-requests", "4", "--memory-limit", "400M") as server:
        response = httpx.post(f"{server.base}/v1/chat/completions", timeout=120, json={
            "model": "huge", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert response.status_code == 507, response.text
        error = response.json()["error"]
        assert error["type"] == "insufficient_storage_error"
        for words in ("Not enough memory", "KV cache", "CONTEXT_SIZE", "PARALLEL_REQUESTS", "MEMORY_LIMIT"):
            assert words in error["message"], error["message"]
        assert "loading model huge" not in server.log()
        assert httpx.get(f"{server.base}/healthz").status_code == 200


def test_a_second_model_evicts_the_first_when_only_one_fits(tmp_path: Path) -> None:
    models = tmp_path / "models"
    place_model(models)
    for name in ("one", "two"):
        (models / f"{name}.yaml").write_text(f"name: {name}\nparameters:\n  model: {CHAT_FILE}\n"
                                             "context_size: 512\n")
    one = estimate("llama-cpp", options(512, 1)).total
    limit = int(one * 1.5)
    with LokalServer(models, "--parallel-requests", "1", "--memory-limit", str(limit)) as server:
        for name in ("one", "two", "one"):
            response = httpx.post(f"{server.base}/v1/chat/completions", timeout=300, json={
                "model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
            assert response.status_code == 200, response.text
        log = server.log()
        assert log.count("unloading model one (generate") == 1, log
        assert log.count("unloading model two (generate") == 1, log
        assert "to make room for two" in log
