"""The KV cache and context a GGUF is loaded with: LocalAI's `cache_type_k` / `cache_type_v`,
`flash_attention` and `parameters.batch` reach llama.cpp, the memory estimate follows the
cache type, and a context_size past what the model was trained on is reported, budgeted and
loaded as the context the engine really gives each request."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from lokal.engines.base import LoadOptions
from lokal.formats.modelfile import read_gguf
from lokal.models.catalog import scan_models
from lokal.models.memory import estimate
from lokal.models.planner import EngineDefaults, plan_load
from tests.conftest import LokalServer, place_model, smollm_gguf

SMOL_TRAINED = 8192  # SmolLM2-135M's n_ctx_train


def options(**kwargs: object) -> LoadOptions:
    return LoadOptions(model_path=smollm_gguf(), context_size=2048, threads=2, parallel=4,
                       gguf=read_gguf(smollm_gguf()), **kwargs)  # type: ignore[arg-type]


def test_a_q8_0_cache_is_estimated_at_about_half_the_f16_bytes() -> None:
    f16 = estimate("llama-cpp", options())
    q8 = estimate("llama-cpp", options(cache_type_k="q8_0", cache_type_v="q8_0"))
    q4 = estimate("llama-cpp", options(cache_type_k="q4_0", cache_type_v="q4_0"))
    assert q8.kv_cache / f16.kv_cache == pytest.approx(34 / 64)  # q8_0: 34 bytes per 32 values
    assert q4.kv_cache / f16.kv_cache == pytest.approx(18 / 64)
    mixed = estimate("llama-cpp", options(cache_type_k="q8_0"))  # only K quantised
    assert mixed.kv_cache == pytest.approx((f16.kv_cache + q8.kv_cache) / 2, rel=1e-6)
    assert f16.weights == q8.weights and f16.tokens == q8.tokens == 2048 * 4


def test_config_fields_are_read_and_bad_values_make_the_model_broken(tmp_path: Path) -> None:
    place_model(tmp_path, "smol.gguf")
    (tmp_path / "good.yaml").write_text("name: good\nparameters:\n  model: smol.gguf\n  batch: 256\n"
                                        "cache_type_k: Q8_0\ncache_type_v: q4_0\nflash_attention: true\n")
    (tmp_path / "bad.yaml").write_text("name: bad\nparameters:\n  model: smol.gguf\ncache_type_k: q9_9\n")
    (tmp_path / "fa.yaml").write_text("name: fa\nparameters:\n  model: smol.gguf\nflash_attention: sometimes\n")
    entries = {e.name: e for e in scan_models(tmp_path)}
    good = plan_load(entries["good"], "chat", EngineDefaults(threads=2, parallel=2)).options
    assert (good.cache_type_k, good.cache_type_v, good.flash_attention, good.batch) == ("q8_0", "q4_0", "on", 256)
    assert "q9_9" in (entries["bad"].error or "") and "KV cache type" in (entries["bad"].error or "")
    assert "flash_attention" in (entries["fa"].error or "")


def test_a_context_past_the_trained_one_is_planned_as_the_trained_one(tmp_path: Path) -> None:
    place_model(tmp_path, "smol.gguf")
    (tmp_path / "long.yaml").write_text("name: long\nparameters:\n  model: smol.gguf\ncontext_size: 32768\n")
    (tmp_path / "fits.yaml").write_text("name: fits\nparameters:\n  model: smol.gguf\ncontext_size: 4096\n")
    entries = {e.name: e for e in scan_models(tmp_path)}
    plan = plan_load(entries["long"], "chat", EngineDefaults(threads=2, parallel=2))
    assert plan.options.context_size == SMOL_TRAINED
    assert plan.context_note is not None and "32768" in plan.context_note and str(SMOL_TRAINED) in plan.context_note
    assert estimate("llama-cpp", plan.options).tokens == SMOL_TRAINED * 2  # the budget counts what is used
    fits = plan_load(entries["fits"], "chat", EngineDefaults(threads=2, parallel=2))
    assert fits.options.context_size == 4096 and fits.context_note is None
    # A server-wide CONTEXT_SIZE is capped the same way, and says which setting asked.
    (tmp_path / "plain.yaml").write_text("name: plain\nparameters:\n  model: smol.gguf\n")
    plain = {e.name: e for e in scan_models(tmp_path)}["plain"]
    capped = plan_load(plain, "chat", EngineDefaults(threads=2, parallel=1, context_size=100000))
    assert capped.options.context_size == SMOL_TRAINED and "CONTEXT_SIZE" in (capped.context_note or "")


def test_the_effective_context_is_what_the_server_reports_and_loads(tmp_path: Path) -> None:
    models = tmp_path / "models"
    place_model(models, "smol.gguf")
    (models / "long.yaml").write_text("name: long\nparameters:\n  model: smol.gguf\ncontext_size: 16384\n")
    with LokalServer(models, "--parallel-requests", "1") as server:
        described = httpx.get(f"{server.base}/lokal/models/long/state", timeout=30).json()
        assert described["context_size"] == SMOL_TRAINED and described["trained_context"] == SMOL_TRAINED
        assert "16384" in described["context_note"]
        shown = httpx.post(f"{server.base}/api/show", json={"model": "long"}, timeout=30).json()
        assert re.search(rf"num_ctx\s+{SMOL_TRAINED}\b", shown["parameters"]), shown["parameters"]
        r = httpx.post(f"{server.base}/v1/chat/completions", timeout=300, json={
            "model": "long", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
        assert r.status_code == 200, r.text
        log = server.log()
        assert f"context {SMOL_TRAINED}, 1 slots" in log  # what the engine was built with
        assert log.count("is more than the 8192 tokens the model was trained on") == 1  # said once, at the load


def test_a_q8_0_cache_loads_and_answers(tmp_path: Path) -> None:
    models = tmp_path / "models"
    place_model(models, "smol.gguf")
    (models / "q8.yaml").write_text("name: q8\nparameters:\n  model: smol.gguf\n  temperature: 0\n"
                                    "context_size: 1024\ncache_type_k: q8_0\ncache_type_v: q8_0\n")
    with LokalServer(models, "--parallel-requests", "2") as server:
        r = httpx.post(f"{server.base}/v1/chat/completions", timeout=300, json={
            "model": "q8", "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 12})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"].strip()
        assert "KV cache q8_0/q8_0" in server.log()


def test_a_quantised_v_cache_without_flash_attention_fails_the_load_saying_why(tmp_path: Path) -> None:
    models = tmp_path / "models"
    place_model(models, "smol.gguf")
    (models / "nofa.yaml").write_text("name: nofa\nparameters:\n  model: smol.gguf\ncontext_size: 512\n"
                                      "cache_type_v: q8_0\nflash_attention: off\n")
    with LokalServer(models) as server:
        r = httpx.post(f"{server.base}/v1/chat/completions", timeout=120, json={
            "model": "nofa", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
        assert r.status_code >= 500, r.text
        message = r.json()["error"]["message"]
        assert "cache_type_v q8_0 needs flash attention" in message and "flash_attention" in message
