"""/metrics scraped with prometheus_client's parser before and after real traffic:
every metric moves by what was sent (streamed and not, two models, errors, a
cancelled stream, a 429), and the dashboard and alerts name only real metrics."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import LokalServer, place_folder, place_model, smollm_gguf
from tests.observability import delta, names, scrape, value, wait_for

CHAT = "smol.gguf"
EMBED = "minilm"
BROKEN = "trunc-data.gguf"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LokalServer]:
    models = tmp_path_factory.mktemp("obs") / "models"
    place_model(models, CHAT)
    place_folder(models, "bert")
    (models / "minilm.yaml").write_text(f"name: {EMBED}\nparameters:\n  model: bert\n")
    # The header reads fine, the tensor data is missing: the engine fails to load it.
    (models / BROKEN).write_bytes(smollm_gguf().read_bytes()[:20_000_000])
    with LokalServer(models, "--parallel-requests", "1", "--queue-size", "1",
                     "--context-size", "512") as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server: LokalServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base, timeout=120) as client:
        yield client


def chat_body(max_tokens: int = 8, content: str = "Say hi.", **extra: Any) -> dict[str, Any]:
    return {"model": CHAT, "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0, **extra}


def stream_usage(http: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    with http.stream("POST", "/v1/chat/completions", json=dict(body, stream=True,
                                                              stream_options={"include_usage": True})) as r:
        assert r.status_code == 200
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return json.loads(events[-2])["usage"]


def cached(usage: dict[str, Any]) -> int:
    return int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)


def test_generation_metrics_move_by_what_was_sent(server: LokalServer, http: httpx.Client) -> None:
    before = scrape(server.base)
    assert value(before, "lokal_models_loaded") == 0
    usages = []
    r = http.post("/v1/chat/completions", json=chat_body())  # loads the model
    assert r.status_code == 200, r.text
    usages.append(r.json()["usage"])
    usages.append(stream_usage(http, chat_body(6)))
    usages.append(stream_usage(http, chat_body(6)))  # same prompt: served from the prompt cache
    r = http.post("/v1/completions", json={"model": CHAT, "prompt": "Once upon a time", "max_tokens": 5,
                                           "ignore_eos": True})
    assert r.status_code == 200, r.text
    usages.append(r.json()["usage"])
    after = scrape(server.base)

    chat = {"family": "openai", "route": "/chat/completions", "model": CHAT}
    assert delta(before, after, "lokal_requests_total", **chat, status="200") == 3
    assert delta(before, after, "lokal_request_duration_seconds_count", **chat) == 3
    completions = dict(chat, route="/completions")
    assert delta(before, after, "lokal_requests_total", **completions, status="200") == 1
    assert delta(before, after, "lokal_request_duration_seconds_count", **completions) == 1
    assert delta(before, after, "lokal_generation_requests_total", model=CHAT, status="ok") == 4

    # Every request's first token, every later token's gap, every queue wait.
    assert delta(before, after, "lokal_time_to_first_token_seconds_count", model=CHAT) == 4
    assert delta(before, after, "lokal_time_to_first_token_seconds_sum", model=CHAT) > 0
    assert delta(before, after, "lokal_time_per_output_token_seconds_count", model=CHAT) == \
        sum(u["completion_tokens"] - 1 for u in usages)
    assert delta(before, after, "lokal_queue_wait_seconds_count", model=CHAT) == 4
    # Inf bucket = count: the buckets hold every observation.
    assert value(after, "lokal_time_to_first_token_seconds_bucket", model=CHAT, le="+Inf") == \
        value(after, "lokal_time_to_first_token_seconds_count", model=CHAT)

    assert delta(before, after, "lokal_prompt_tokens_total", model=CHAT) == sum(u["prompt_tokens"] for u in usages)
    assert delta(before, after, "lokal_generation_tokens_total", model=CHAT) == \
        sum(u["completion_tokens"] for u in usages) == 8 + 6 + 6 + 5
    assert delta(before, after, "lokal_prompt_cached_tokens_total", model=CHAT) == sum(cached(u) for u in usages)
    assert cached(usages[2]) > 0  # the repeated prompt was a cache hit

    assert delta(before, after, "lokal_model_loads_total", model=CHAT, purpose="generate") == 1
    assert delta(before, after, "lokal_model_load_duration_seconds_count", model=CHAT, purpose="generate") == 1
    # State read from the registry at scrape time.
    key = {"model": CHAT, "purpose": "generate"}
    assert value(after, "lokal_models_loaded") == 1
    assert value(after, "lokal_model_loaded", **key, engine="llama-cpp") == 1
    assert value(after, "lokal_model_memory_bytes", **key) == (server.models / CHAT).stat().st_size
    assert value(after, "lokal_slots_total", **key) == 1
    for gauge in ("lokal_slots_busy", "lokal_requests_running", "lokal_requests_waiting"):
        assert (gauge, tuple(sorted(key.items()))) in after and value(after, gauge, **key) == 0
    assert value(after, "lokal_models_known") == 3


def test_embedding_metrics_count_inputs_and_batches(server: LokalServer, http: httpx.Client) -> None:
    before = scrape(server.base)
    for inputs in (["one", "two", "three"], "four"):
        r = http.post("/v1/embeddings", json={"model": EMBED, "input": inputs})
        assert r.status_code == 200, r.text
    r = http.post("/v1/embeddings", json={"model": "no-such-model", "input": "x"})
    assert r.status_code == 404
    after = scrape(server.base)
    labels = {"family": "openai", "route": "/embeddings"}
    assert delta(before, after, "lokal_requests_total", **labels, model=EMBED, status="200") == 2
    assert delta(before, after, "lokal_requests_total", **labels, model="", status="404") == 1
    assert delta(before, after, "lokal_request_duration_seconds_count", **labels, model=EMBED) == 2
    assert delta(before, after, "lokal_embedding_inputs_total", model=EMBED) == 4
    assert delta(before, after, "lokal_embedding_batch_inputs_count", model=EMBED) == 2
    assert delta(before, after, "lokal_embedding_batch_inputs_sum", model=EMBED) == 4
    assert delta(before, after, "lokal_model_loads_total", model=EMBED, purpose="embed") == 1
    assert value(after, "lokal_model_loaded", model=EMBED, purpose="embed", engine="sentence-transformers") == 1
    assert value(after, "lokal_model_memory_bytes", model=EMBED, purpose="embed") > 1_000_000
    # No slots for an embedding model; generation metrics untouched.
    assert ("lokal_slots_total", (("model", EMBED), ("purpose", "embed"))) not in after
    assert delta(before, after, "lokal_time_to_first_token_seconds_count", model=CHAT) == 0


def test_errors_are_counted_by_status(server: LokalServer, http: httpx.Client) -> None:
    http.post("/v1/chat/completions", json=chat_body(1))  # the chat model is loaded
    before = scrape(server.base)
    too_long = http.post("/v1/chat/completions", json=chat_body(4, content="lorem ipsum " * 400))
    assert too_long.status_code == 400, too_long.text
    broken = http.post("/v1/chat/completions", json=dict(chat_body(4), model=BROKEN))
    assert broken.status_code >= 500, broken.text
    invalid = http.post("/v1/chat/completions", json={"model": CHAT})  # no messages
    assert invalid.status_code == 400
    after = scrape(server.base)
    chat = {"family": "openai", "route": "/chat/completions"}
    assert delta(before, after, "lokal_requests_total", **chat, model=CHAT, status="400") == 1
    assert delta(before, after, "lokal_requests_total", **chat, model="", status="400") == 1
    assert delta(before, after, "lokal_requests_total", **chat, model=BROKEN,
                 status=str(broken.status_code)) == 1
    assert delta(before, after, "lokal_generation_requests_total", model=CHAT, status="error") == 1
    assert delta(before, after, "lokal_time_to_first_token_seconds_count", model=CHAT) == 0
    assert delta(before, after, "lokal_model_load_failures_total", model=BROKEN, purpose="generate") == 1
    assert value(after, "lokal_model_loaded", model=BROKEN, purpose="generate", engine="llama-cpp") == 0


def test_a_cancelled_stream_is_counted_as_such(server: LokalServer, http: httpx.Client) -> None:
    http.post("/v1/chat/completions", json=chat_body(1))
    before = scrape(server.base)
    received = 0
    with http.stream("POST", "/v1/chat/completions", json=chat_body(400, stream=True)) as r:
        for line in r.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                received += 1
                if received == 3:
                    break  # hang up mid-stream

    def counted() -> bool:
        now = scrape(server.base)
        return delta(before, now, "lokal_generation_requests_total", model=CHAT, status="cancelled") == 1

    wait_for(counted, what="the cancelled generation to be counted")
    after = scrape(server.base)
    labels = {"family": "openai", "route": "/chat/completions", "model": CHAT}
    assert delta(before, after, "lokal_requests_total", **labels, status="499") == 1
    assert delta(before, after, "lokal_requests_total", **labels, status="200") == 0
    assert delta(before, after, "lokal_request_duration_seconds_count", **labels) == 1
    assert delta(before, after, "lokal_time_to_first_token_seconds_count", model=CHAT) == 1
    generated = delta(before, after, "lokal_generation_tokens_total", model=CHAT)
    assert 3 <= generated < 400
    wait_for(lambda: value(scrape(server.base), "lokal_requests_running", model=CHAT, purpose="generate") == 0,
             what="the slot to be free")


def test_a_full_queue_shows_in_the_gauges_and_counts_429(server: LokalServer, http: httpx.Client) -> None:
    http.post("/v1/chat/completions", json=chat_body(1))
    before = scrape(server.base)
    statuses: list[int] = []
    gate = threading.Barrier(4)

    def one() -> None:
        gate.wait()
        r = httpx.post(f"{server.base}/v1/chat/completions", json=chat_body(80), timeout=120)
        statuses.append(r.status_code)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    key = {"model": CHAT, "purpose": "generate"}
    seen: dict[str, float] = {}

    def queued() -> bool:
        now = scrape(server.base)
        if value(now, "lokal_requests_waiting", **key) == 1:
            seen.update({g: value(now, g, **key) for g in ("lokal_requests_running", "lokal_slots_busy",
                                                           "lokal_slots_total")})
            return True
        return False

    wait_for(queued, what="a request waiting for the slot")
    for t in threads:
        t.join(120)
    assert sorted(statuses) == [200, 200, 429, 429]
    assert seen == {"lokal_requests_running": 1, "lokal_slots_busy": 1, "lokal_slots_total": 1}
    after = scrape(server.base)
    labels = {"family": "openai", "route": "/chat/completions", "model": CHAT}
    assert delta(before, after, "lokal_requests_total", **labels, status="429") == 2
    assert delta(before, after, "lokal_requests_total", **labels, status="200") == 2
    assert delta(before, after, "lokal_request_duration_seconds_count", **labels) == 4
    assert delta(before, after, "lokal_time_to_first_token_seconds_count", model=CHAT) == 2
    assert delta(before, after, "lokal_queue_wait_seconds_count", model=CHAT) == 2
    assert delta(before, after, "lokal_queue_wait_seconds_sum", model=CHAT) > 0  # one waited for the other
    assert delta(before, after, "lokal_generation_tokens_total", model=CHAT) == 160
    assert value(after, "lokal_requests_waiting", **key) == 0


def _metric_names(expressions: list[str]) -> set[str]:
    found = set()
    for expr in expressions:
        found |= set(re.findall(r"\blokal_[a-z0-9_]+", expr))
    return found


def test_dashboard_and_alerts_name_metrics_that_exist(server: LokalServer, http: httpx.Client) -> None:
    # Traffic enough for every series to exist (also when run alone).
    assert http.post("/v1/chat/completions", json=chat_body(3)).status_code == 200
    assert http.post("/v1/embeddings", json={"model": EMBED, "input": "x"}).status_code == 200
    http.post("/v1/chat/completions", json=dict(chat_body(1), model=BROKEN))
    exported = names(scrape(server.base))

    dashboard = json.loads((REPO / "docs" / "grafana" / "lokal.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(exprs) >= 8
    for needed in ("lokal_time_to_first_token_seconds_bucket", "lokal_time_per_output_token_seconds_bucket",
                   "lokal_generation_tokens_total", "lokal_requests_waiting", "lokal_slots_busy",
                   "lokal_prompt_cached_tokens_total"):
        assert needed in _metric_names(exprs), needed
    assert _metric_names(exprs) <= exported, _metric_names(exprs) - exported
    variables = [v.get("query", "") for v in dashboard.get("templating", {}).get("list", [])]
    assert _metric_names([v if isinstance(v, str) else v.get("query", "") for v in variables]) <= exported

    rules = yaml.safe_load((REPO / "docs" / "grafana" / "lokal-alerts.yaml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert {"LokalQueueGrowing", "LokalTimeToFirstTokenHigh", "LokalModelLoadFailures"} <= \
        {rule["alert"] for rule in alerts}
    assert _metric_names([rule["expr"] for rule in alerts]) <= exported
