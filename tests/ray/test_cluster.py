"""`lokal serve --ray` on a real two-node Ray cluster on loopback (1 CPU per node, one
model replica each, SmolLM2 with 1 thread): requests reach both nodes, a model stays on
the replica that holds it, the openai SDK and a plain streaming client work unchanged,
and losing a node mid-stream fails only that stream."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

ray_cluster_utils = pytest.importorskip("ray.cluster_utils")

from tests.conftest import LokalServer, place_model  # noqa: E402

pytestmark = pytest.mark.slow

A, B = "smol-a.gguf", "smol-b.gguf"


class RayLokal(LokalServer):
    """`lokal serve --ray`: Serve takes a while to place its actors on a busy machine."""

    start_timeout = 240.0
    start_poll = 0.5


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    c = ray_cluster_utils.Cluster(initialize_head=True,
                                  head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.worker = c.add_node(num_cpus=1)
    try:
        yield c
    finally:
        c.shutdown()


@pytest.fixture(scope="module")
def lokal(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayLokal]:
    models = tmp_path_factory.mktemp("ray") / "models"
    place_model(models, A)
    place_model(models, B)
    with RayLokal(models, "--ray", cluster.address, "--ray-replicas", "2", "--threads", "1",
                  "--parallel-requests", "2") as server:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # both replicas up and posting their state
            r = httpx.get(f"{server.base}/readyz", timeout=10)
            if r.status_code == 200 and len(r.json()["replicas"]) == 2:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"not ready: {r.text}\n{server.log()}")
        yield server


def chat(base: str, model: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 6,
            "temperature": 0, **extra}
    return httpx.post(f"{base}/v1/chat/completions", json=body, timeout=120)


def test_models_go_to_both_nodes_and_stay_on_the_replica_that_holds_them(cluster: Any, lokal: RayLokal) -> None:
    nodes = {cluster.head_node.node_id, cluster.worker.node_id}
    first_a = chat(lokal.base, A)
    assert first_a.status_code == 200, first_a.text
    first_b = chat(lokal.base, B)
    assert first_b.status_code == 200, first_b.text
    node_a, node_b = first_a.headers["x-lokal-node"], first_b.headers["x-lokal-node"]
    # the second model went to the replica holding no model: the other node
    assert {node_a, node_b} == nodes
    for model, node in ((A, node_a), (B, node_b), (A, node_a), (B, node_b)):
        r = chat(lokal.base, model)
        assert r.status_code == 200, r.text
        assert r.headers["x-lokal-node"] == node, f"{model} left the replica holding it"
    time.sleep(1.5)  # replicas post their state every second
    ready = httpx.get(f"{lokal.base}/readyz").json()
    held = {r["node"]: r["models"] for r in ready["replicas"]}
    assert held == {node_a: [A], node_b: [B]}
    metrics = httpx.get(f"{lokal.base}/metrics").text
    assert f'lokal_replica_model_loaded{{model="{A}",node="{node_a}"' in metrics
    listing = subprocess.run([sys.executable, "-m", "lokal", "models", "list", "--ray", cluster.address],
                             capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    lines = [line for line in listing.stdout.splitlines() if line.startswith("node ")]
    assert any(node_a in line and A in line for line in lines), listing.stdout
    assert any(node_b in line and B in line for line in lines), listing.stdout


def test_openai_sdk_and_a_streaming_client_work_through_the_ingress(lokal: RayLokal) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{lokal.base}/v1", api_key="x", max_retries=0)
    answer = client.chat.completions.create(model=A, messages=[{"role": "user", "content": "Hi"}],
                                            max_tokens=8)
    assert answer.choices[0].message.content and answer.usage.completion_tokens > 0
    stream = client.chat.completions.create(model=A, messages=[{"role": "user", "content": "Count to ten."}],
                                            max_tokens=24, stream=True, temperature=0)
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 10  # token by token, not one block at the end
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert caught.value.body["type"] == "not_found_error"
    with pytest.raises(openai.BadRequestError) as bad:  # a replica's refusal keeps its status and type
        client.completions.create(model=A, prompt="hello " * 6000, max_tokens=4)
    assert bad.value.body["type"] == "invalid_request_error"
    # a plain SSE client: chunks arrive while generation runs
    body = {"model": A, "messages": [{"role": "user", "content": "Tell me a story."}],
            "max_tokens": 40, "stream": True}
    arrivals = []
    with httpx.stream("POST", f"{lokal.base}/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-lokal-node"]
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                arrivals.append(time.monotonic())
    assert len(arrivals) >= 20
    assert arrivals[-1] - arrivals[1] > 0.1  # spread out, as made


def test_losing_a_node_mid_stream_fails_only_that_stream(cluster: Any, lokal: RayLokal) -> None:
    worker = cluster.worker.node_id
    model = next(m for m in (A, B) if chat(lokal.base, m).headers["x-lokal-node"] == worker)
    other = A if model == B else B
    body = {"model": model, "messages": [{"role": "user", "content": "Write a long story about a fox."}],
            "max_tokens": 2000, "ignore_eos": True, "stream": True, "temperature": 0}
    events: list[str] = []
    with httpx.stream("POST", f"{lokal.base}/v1/chat/completions", json=body, timeout=120) as r:
        assert r.headers["x-lokal-node"] == worker
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data: "):
                events.append(line[6:])
            if len(events) == 3:
                break
        # meanwhile the head node's replica keeps answering
        assert chat(lokal.base, other).status_code == 200
        cluster.remove_node(cluster.worker, allow_graceful=False)
        try:
            for line in lines:
                if line.startswith("data: "):
                    events.append(line[6:])
        except httpx.HTTPError:
            pass  # the connection cut is also a clean failure
    # lokal's in-stream error (then [DONE], as on one machine), or a cut connection
    if events[-1] == "[DONE]":
        error = json.loads(events[-2])
        assert error["error"]["code"] == 503, error
        assert "lost" in error["error"]["message"]
    # else: cut before [DONE], which every client reads as a failed stream
    # later requests for either model succeed on the remaining node
    for m in (model, other, model):
        r = chat(lokal.base, m)
        assert r.status_code == 200, r.text
        assert r.headers["x-lokal-node"] == cluster.head_node.node_id
