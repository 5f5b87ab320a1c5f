"""Soak: lokal under steady mixed load for a long while, with figures every minute.

The same traffic as tests/reliability/test_load.py, for as long as you say:
`--clients` concurrent clients (default 64) send chat streams (max_tokens <= 16),
text completions and embeddings, one after another, to the demo models
(SmolLM2-135M-Instruct as gpt-3.5-turbo, all-MiniLM-L6-v2 as
text-embedding-ada-002). Every `--interval` seconds (default 60) it prints the
requests of that interval and of the whole run, errors by status, p50/p99
latency, and the server's RSS and thread count (from /proc); at the end, the
totals and the RSS and threads at the start and the end.

    python bench/soak.py                    # 10 minutes, a server of its own
    python bench/soak.py --duration 3600 --clients 16 --json soak.json
    python bench/soak.py --url http://127.0.0.1:8080   # a running server (no RSS figures
                                                       # unless --pid names its process)

With no --url it starts `python -m lokal serve` on a free 127.0.0.1 port over a
demo models folder (made with `lokal demo`'s own code, in a temporary folder
unless --models names one) and stops it at the end. Traffic goes to 127.0.0.1
(or --url) only. Each run is bounded: --duration for new requests, then at most
--request-timeout for those in flight. The exit status is 1 when any request
failed or the server died, else 0.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, or imported by the tests
from bench import _http  # noqa: E402

HOST = "127.0.0.1"
CHAT_MODEL = "gpt-3.5-turbo"
EMBED_MODEL = "text-embedding-ada-002"
KINDS = ("chat", "completion", "embeddings")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def proc_figures(pid: int | None) -> tuple[float, int] | None:
    """(RSS MB, threads) of a process, from /proc."""
    if pid is None:
        return None
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    except OSError:
        return None
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["Threads"])


def request_for(kind: str, n: int) -> tuple[str, dict[str, Any]]:
    if kind == "chat":
        return "/v1/chat/completions", {
            "model": CHAT_MODEL, "stream": True, "max_tokens": 8 + n % 9, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": f"Request {n}: name a colour."}]}
    if kind == "completion":
        return "/v1/completions", {"model": CHAT_MODEL, "prompt": f"{n} The sky is", "max_tokens": 8}
    return "/v1/embeddings", {"model": EMBED_MODEL, "input": [f"document {n}", "another sentence to embed"]}


class Window:
    """Requests, statuses and latencies of one interval (or of the whole run)."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.statuses: collections.Counter[str] = collections.Counter()

    def add(self, kind: str, status: str, seconds: float | None) -> None:
        self.statuses[f"{kind} {status}"] += 1
        if seconds is not None:
            self.latencies.append(seconds)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def errors(self) -> dict[str, int]:
        return {k: v for k, v in sorted(self.statuses.items()) if not k.endswith(" 200")}

    def line(self, seconds: float) -> str:
        return (f"{self.requests:6} requests ({self.requests / max(seconds, 1e-9):5.1f}/s)  "
                f"p50 {percentile(self.latencies, 50):6.2f}s  p99 {percentile(self.latencies, 99):6.2f}s  "
                f"errors: {self.errors or 'none'}")


async def one(client: httpx.AsyncClient, kind: str, n: int) -> tuple[str, float | None]:
    path, body = request_for(kind, n)
    started = time.monotonic()
    try:
        if kind == "chat":
            async with client.stream("POST", path, json=body) as response:
                text = (await response.aread()).decode(errors="replace")
            if response.status_code == 200 and (not text.rstrip().endswith("data: [DONE]")
                                                or '"error"' in text):
                return "bad-stream", time.monotonic() - started
        else:
            response = await client.post(path, json=body)
    except httpx.HTTPError as exc:
        return type(exc).__name__, None
    return str(response.status_code), time.monotonic() - started


async def soak(args: argparse.Namespace, base: str, pid: int | None, proc: subprocess.Popen[bytes] | None
               ) -> dict[str, Any]:
    total, window = Window(), Window()
    started = time.monotonic()
    deadline = started + args.duration
    counter = 0
    figures_start = proc_figures(pid)
    intervals: list[dict[str, Any]] = []
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    timeout = httpx.Timeout(args.request_timeout, connect=30)

    last = 0.0

    def report() -> None:
        nonlocal window, last
        now = time.monotonic() - started
        figures = proc_figures(pid)
        memory = f"  RSS {figures[0]:.0f} MB  threads {figures[1]}" if figures else ""
        print(f"[{now:6.0f}s] interval: {window.line(now - last)}{memory}", flush=True)
        last = now
        print(f"{'':9} total:    {total.line(now)}", flush=True)
        intervals.append({"t": round(now, 1), "requests": window.requests, "errors": window.errors,
                          "p50": percentile(window.latencies, 50), "p99": percentile(window.latencies, 99),
                          "rss_mb": figures[0] if figures else None, "threads": figures[1] if figures else None})
        window = Window()

    async with httpx.AsyncClient(base_url=base, timeout=timeout, limits=limits, trust_env=False) as client:
        async def worker(index: int) -> None:
            nonlocal counter
            turn = 0
            while time.monotonic() < deadline:
                n = counter
                counter += 1
                kind = KINDS[(index + turn) % 3]
                status, seconds = await one(client, kind, n)
                total.add(kind, status, seconds)
                window.add(kind, status, seconds)
                turn += 1

        async def ticker() -> None:
            while time.monotonic() < deadline:
                await asyncio.sleep(min(args.interval, max(0.0, deadline - time.monotonic())))
                if time.monotonic() < deadline:
                    report()
                if proc is not None and proc.poll() is not None:
                    print(f"the server exited with {proc.returncode}", flush=True)
                    return

        await asyncio.gather(ticker(), *(worker(i) for i in range(args.clients)))
    report()
    took = time.monotonic() - started
    figures_end = proc_figures(pid)
    print(f"\nsoak: {args.clients} clients for {took:.0f}s: {total.line(took)}")
    for kind in KINDS:
        print(f"  {kind:10} {sum(v for k, v in total.statuses.items() if k.startswith(kind + ' ')):6} requests")
    if figures_start and figures_end:
        growth = (figures_end[0] - figures_start[0]) / figures_start[0] * 100
        print(f"server RSS {figures_start[0]:.0f} MB -> {figures_end[0]:.0f} MB ({growth:+.1f} %), "
              f"threads {figures_start[1]} -> {figures_end[1]}")
    return {"clients": args.clients, "seconds": took, "requests": total.requests, "errors": total.errors,
            "p50": percentile(total.latencies, 50), "p99": percentile(total.latencies, 99),
            "rss_mb": [figures_start[0] if figures_start else None, figures_end[0] if figures_end else None],
            "threads": [figures_start[1] if figures_start else None, figures_end[1] if figures_end else None],
            "intervals": intervals}


def start_server(args: argparse.Namespace, work: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    from lokal.cli.demo import prepare_demo

    models = prepare_demo(args.models or work / "models")
    port = _http.free_port(HOST)
    log_path = work / "soak-server.log"
    command = [sys.executable, "-m", "lokal", "serve", "--models-path", str(models), "--address", f"{HOST}:{port}",
               "--threads", str(args.threads), "--preload-models", f"{CHAT_MODEL},{EMBED_MODEL}",
               *args.server_args]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCALAI_", "API_KEY"))}
    env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=work, start_new_session=True)
    base = f"http://{HOST}:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"lokal exited with {proc.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(f"{base}/readyz", timeout=5, trust_env=False).status_code == 200:
                return proc, base, log_path
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    stop_server(proc)
    raise RuntimeError("lokal was not ready after 180 s")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=600, help="seconds of load (default 600: 10 minutes)")
    p.add_argument("--interval", type=float, default=60, help="seconds between figures (default 60)")
    p.add_argument("--clients", type=int, default=64, help="concurrent clients (default 64)")
    p.add_argument("--request-timeout", type=float, default=300, help="client timeout per request (default 300)")
    p.add_argument("--threads", type=int, default=2, help="engine threads of the server started (default 2)")
    p.add_argument("--url", default=None, help="a running lokal to soak instead of starting one")
    p.add_argument("--pid", type=int, default=None, help="with --url: its process, for RSS and thread figures")
    p.add_argument("--models", type=Path, default=None, help="demo models folder to use or make (default: temporary)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    p.add_argument("server_args", nargs="*", help="after --: more `lokal serve` flags, e.g. -- --parallel-requests 8")
    args = p.parse_args(argv)
    if args.duration <= 0 or args.interval <= 0 or args.clients < 1:
        p.error("--duration, --interval and --clients must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lokal-soak-") as tmp:
        proc = None
        if args.url:
            base, pid = args.url.rstrip("/"), args.pid
        else:
            proc, base, log_path = start_server(args, Path(tmp))
            pid = proc.pid
            print(f"lokal on {base} (pid {pid}, log {log_path}); {args.clients} clients for {args.duration:.0f}s",
                  flush=True)
        try:
            result = asyncio.run(soak(args, base, pid, proc))
            died = proc is not None and proc.poll() is not None
        finally:
            if proc is not None:
                stop_server(proc)
    result["server_died"] = died
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if died:
        print("FAIL: the server died during the soak")
    return 1 if result["errors"] or died else 0


if __name__ == "__main__":
    sys.exit(main())
