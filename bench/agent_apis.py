"""Decode speed through the Responses and Messages APIs vs. the same generation
through /v1/chat/completions, on one lokal server, in one run.

The same prompt, greedy (temperature 0), the same token limit: all three ask the
engine for the same tokens. For each API a streamed request is read; its decode
speed is the completion tokens the answer reports (chat's `usage`, Responses'
`response.completed` or `.incomplete`, Messages' `message_delta`) after the first, divided by the
time from the first text event to the last (time to first token excluded). Tokens,
not events, are counted: chat completions coalesces tokens that are ready together
into one chunk, Messages and Responses send an event per delta. --repeats rounds,
each running every API twice in ABBA order (A B C C B A, the next round reversed);
a ratio is the median of per-pair ratios (an API's run against chat's at the same
position of the round) with their spread. Also printed: the server process's CPU time per token
for each API (lokal's own cost, the engine's worker process not included). Ratios
to chat completions, target >= 0.97.

    python bench/agent_apis.py [--max-tokens 256] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.conftest import LokalServer, place_model  # noqa: E402

import _http  # noqa: E402 - bench/_http.py, beside this script
from _pairs import Ratio, Samples, abba  # noqa: E402 - bench/_pairs.py

PROMPT = "Write a long story about a lighthouse keeper and a storm."


def bodies(max_tokens: int) -> dict[str, tuple[str, dict, str]]:
    messages = [{"role": "user", "content": PROMPT}]
    return {
        "chat": ("/v1/chat/completions", {"model": "smol", "messages": messages, "max_tokens": max_tokens,
                                          "temperature": 0, "stream": True,
                                          "stream_options": {"include_usage": True}}, "chat"),
        "responses": ("/v1/responses", {"model": "smol", "input": PROMPT, "max_output_tokens": max_tokens,
                                        "temperature": 0, "stream": True}, "response.output_text.delta"),
        "messages": ("/v1/messages", {"model": "smol", "messages": messages, "max_tokens": max_tokens,
                                      "temperature": 0, "stream": True}, "content_block_delta"),
    }


def _tokens(kind: str, data: dict) -> int | None:
    """The completion tokens an event reports, if it is the one that reports them."""
    if kind == "chat":
        return (data.get("usage") or {}).get("completion_tokens")
    if data.get("type") in ("response.completed", "response.incomplete"):
        return data["response"]["usage"]["output_tokens"]
    if data.get("type") == "message_delta":
        return data["usage"]["output_tokens"]
    return None


def speed(client: httpx.Client, path: str, body: dict, kind: str) -> tuple[float, int]:
    """Decode tokens/s and the completion tokens of one streamed answer."""
    stamps: list[float] = []
    tokens = 0
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
            tokens = _tokens(kind, data) or tokens
    if len(stamps) < 3 or tokens < 3:
        raise SystemExit(f"{path}: too few tokens to time ({len(stamps)} events, {tokens} tokens)")
    return (tokens - 1) / (stamps[-1] - stamps[0]), tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
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
            apis = dict(bodies(args.max_tokens))
            runs = Samples()
            cpu: dict[str, float] = {name: 0.0 for name in apis}
            tokens: dict[str, int] = {name: 0 for name in apis}
            with httpx.Client(base_url=server.base, timeout=600) as client:
                for path, body, kind in apis.values():  # warm-up: cache the prompt
                    speed(client, path, body, kind)
                for round_ in range(args.repeats):
                    for name in abba(list(apis), round_):  # A B C C B A, then C B A A B C
                        path, body, kind = apis[name]
                        before = _http.cpu_seconds(server.proc.pid)
                        rate, count = speed(client, path, body, kind)
                        cpu[name] += _http.cpu_seconds(server.proc.pid) - before
                        runs.add(name, round_, rate)
                        tokens[name] += count
    for name in apis:
        per_token = 1000 * cpu[name] / tokens[name]
        print(f"{name:10s} {runs.median(name):7.1f} tok/s  server CPU {per_token:.3f} ms/token  "
              f"(runs: {', '.join(f'{v:.1f}' for v in runs.of(name))})")
    for name in ("responses", "messages"):
        print(Ratio(f"{name} / chat (per pair)", runs.ratios(name, "chat"), 0.97).line(30))


if __name__ == "__main__":
    main()
