"""What the benches share: starting a lokal server, a process's CPU time, and a bare
HTTP/1.1 client (the least CPU a client can spend).

Clients share the machine with the server under test, and pooled httpx spent
enough CPU per token or request to set the pace itself on two cores. Each call
opens a fresh connection (as Dify's `requests.post` does) and sends one POST.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' helpers, for free_port
from tests.ports import free_port  # noqa: E402

HOST = "127.0.0.1"


def link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pids: list[int]) -> list[int]:
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


def rss_tree(pid: int | None) -> int | None:
    """Resident memory of a process and everything under it (lokal's engine workers), in bytes."""
    if pid is None:
        return None
    total = 0
    for one in descendants([pid]):
        try:
            for line in Path(f"/proc/{one}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, ValueError):
            continue
    return total or None


@contextmanager
def serve(models: Path, log_path: Path, *args: str, ready: str = "/readyz",
          timeout: float = 120, stop_timeout: float = 30) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """`lokal serve` on a free loopback port for models (args added), its output in
    log_path, none of the caller's lokal settings in its environment; yields the port and
    the process once `ready` answers 200, stops the server after (SIGTERM, then SIGKILL
    past stop_timeout)."""
    port = free_port(HOST)
    env = {k: v for k, v in os.environ.items()
           if k not in ("API_KEY", "MODELS_PATH", "ADDRESS") and not k.startswith("LOCALAI_")}
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "lokal", "serve", "--models-path", str(models),
                                 "--address", f"{HOST}:{port}", *args],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    if httpx.get(f"http://{HOST}:{port}{ready}", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"lokal did not become ready; see {log_path}")
                time.sleep(0.2)
            yield port, proc
        finally:
            proc.terminate()
            try:
                proc.wait(stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def post(host: str, port: int, path: str, body: dict[str, Any],
               accept: str | None = None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Send body as a JSON POST on a new connection; the connection, to read the answer from."""
    payload = json.dumps(body).encode()
    reader, writer = await asyncio.open_connection(host, port)
    extra = f"Accept: {accept}\r\n".encode() if accept else b""
    writer.write(b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n%s"
                 b"Content-Length: %d\r\nConnection: close\r\n\r\n"
                 % (path.encode(), host.encode(), port, extra, len(payload)) + payload)
    await writer.drain()
    return reader, writer
