"""Decode speed through the Responses and Messages APIs vs. the same generation
through /v1/chat/completions, on one lokal server, in one run.

The same prompt, greedy (temperature 0), the same token limit: all three ask the
engine for the same tokens. For each API a streamed request is read and its text
deltas counted between the first and the last one, divided by the time between
them (time to first token excluded); the median of --repeats runs per API, the
APIs taking turns so the machine's drift hits them alike. Prints tokens/s per API
and the ratios to chat completions (target >= 0.97).

    python bench/agent_apis.py [--max-tokens 128] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.conftest import LokalServer, place_model  # noqa: E402

PROMPT = "Write a long story about a lighthouse keeper and a storm."


def bodies(max_tokens: int) -> dict[str, tuple[str, dict, str]]:
    messages = [{"role": "user", "content": PROMPT}]
    return {
        "chat": ("/v1/chat/completions", {"model": "smol", "messages": messages, "max_tokens": max_tokens,
                                          "temperature": 0, "stream": True}, "chat"),
        "responses": ("/v1/responses", {"model": "smol", "input": PROMPT, "max_output_tokens": max_tokens,
                                        "temperature": 0, "stream": True}, "response.output_text.delta"),
        "messages": ("/v1/messages", {"model": "smol", "messages": messages, "max_tokens": max_tokens,
                                      "temperature": 0, "stream": True}, "content_block_delta"),
    }


def speed(client: httpx.Client, path: str, body: dict, kind: str) -> float:
    stamps: list[float] = []
    with client.stream("POST", path, json=body) as answer:
        for line in answer.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if kind == "chat":
                hit = any(c.get("delta", {}).get("content") for c in data.get("choices") or [])
            else:
                hit = data.get("type") == kind
            if hit:
                stamps.append(time.perf_counter())
    if len(stamps) < 3:
        raise SystemExit(f"{path}: too few tokens to time ({len(stamps)})")
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "models"
        place_model(folder, "smol.gguf")
        (folder / "smol.yaml").write_text("name: smol\nparameters:\n  model: smol.gguf\ncontext_size: 2048\n")
        with LokalServer(folder, "--preload-models", "smol", "--parallel-requests", "1",
                         "--threads", str(args.threads)) as server:
            server.wait_ready()
            runs: dict[str, list[float]] = {name: [] for name in bodies(args.max_tokens)}
            with httpx.Client(base_url=server.base, timeout=600) as client:
                for path, body, kind in bodies(args.max_tokens).values():  # warm-up: cache the prompt
                    speed(client, path, body, kind)
                for _ in range(args.repeats):
                    for name, (path, body, kind) in bodies(args.max_tokens).items():
                        runs[name].append(speed(client, path, body, kind))
    medians = {name: statistics.median(values) for name, values in runs.items()}
    for name, value in medians.items():
        print(f"{name:10s} {value:7.1f} tok/s  (runs: {', '.join(f'{v:.1f}' for v in runs[name])})")
    for name in ("responses", "messages"):
        ratio = medians[name] / medians["chat"]
        print(f"{name} / chat = {ratio:.3f}  {'PASS' if ratio >= 0.97 else 'FAIL'} (target >= 0.97)")


if __name__ == "__main__":
    main()
