"""Interrupting the test run: Ctrl-C, SIGINT (once or twice) and SIGTERM each end it, and
every lokal server and engine worker it started ends with it (even when it is SIGKILLed).

Each case runs the test runner on a tiny test file in a subprocess: the test starts a real
server with a model loaded (a worker process) and a stream running, then waits. The runner
starts as a background job of a non-interactive shell would, with SIGINT ignored (Python
then keeps ignoring it unless told otherwise: the case that was reported).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

TINY = '''\
import os
import threading
import time
from pathlib import Path

import httpx

from tests.conftest import smol_server


def test_busy(tmp_path_factory):
    with smol_server(tmp_path_factory, "busy", "--shutdown-grace", "3") as server:
        def stream():
            body = {"model": "smol", "max_tokens": 4000, "ignore_eos": True, "stream": True,
                    "messages": [{"role": "user", "content": "Count to a thousand."}]}
            try:
                with httpx.stream("POST", f"{server.base}/v1/chat/completions", json=body, timeout=600) as r:
                    for _ in r.iter_lines():
                        pass
            except Exception:
                pass

        threading.Thread(target=stream, daemon=True).start()
        time.sleep(1)
        Path(os.environ["LOKAL_TEST_READY"]).write_text(str(server.proc.pid))
        time.sleep(600)
'''


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(parent pid, start time, state) of a process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), int(fields[19]), fields[0]


def _descendants(root: int) -> dict[int, tuple[int, str]]:
    """Every process below root: pid -> (start time, command line)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            children.setdefault(stat[0], []).append(int(entry.name))
    found: dict[int, tuple[int, str]] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        stat = _stat(pid)
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if stat is not None:
            found[pid] = (stat[1], cmdline)
            todo += children.get(pid, [])
    return found


def _alive(pid: int, started: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[1] == started and stat[2] != "Z"


def _runner_command(runner: str, test_file: Path) -> list[str]:
    pytest_args = ["-p", "tests.conftest", "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT),
                   "-q", "-p", "no:cacheprovider", str(test_file)]
    if runner == "dev.py":
        return [sys.executable, str(ROOT / "dev.py"), "test", *pytest_args]
    return [sys.executable, "-m", "pytest", *pytest_args]


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# dev.py hands over to pytest (exec): the same process then, so the cases that are about
# what dev.py does (SIGINT handed on as the default, SIGTERM reaching pytest) are enough.
CASES = [("pytest", s) for s in ["SIGINT", "SIGINT SIGINT", "SIGTERM", "Ctrl-C", "SIGKILL"]] + \
    [("dev.py", s) for s in ["SIGINT", "SIGTERM"]]


@pytest.mark.parametrize(("runner", "signals"), CASES)
def test_an_interrupted_run_ends_with_every_server_it_started(tmp_path: Path, runner: str, signals: str) -> None:
    if runner == "dev.py" and Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        pytest.skip("dev.py runs its own .venv: checked when the suite runs under python3 dev.py test")
    test_file = tmp_path / "test_tiny.py"
    test_file.write_text(TINY)
    ready = tmp_path / "ready"
    log = (tmp_path / "runner.log").open("wb")
    env = dict(os.environ, LOKAL_TEST_READY=str(ready), PYTHONPATH=os.pathsep.join(
        p for p in [str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")] if p))
    # As a background job of a non-interactive shell starts it: SIGINT ignored, own group.
    proc = subprocess.Popen(_runner_command(runner, test_file), cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, preexec_fn=_ignore_sigint, start_new_session=True)
    started: dict[int, tuple[int, str]] = {}
    try:
        deadline = time.monotonic() + 240
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "runner.log").read_text()
            time.sleep(0.2)
        started = _descendants(proc.pid)
        commands = " | ".join(command for _, command in started.values())
        assert "lokal serve" in commands and "lokal.engines.worker" in commands, commands
        for name in signals.split():
            if name == "Ctrl-C":  # the terminal signals its foreground process group
                os.killpg(proc.pid, signal.SIGINT)
            else:
                proc.send_signal(signal.Signals[name])
            time.sleep(0.5)
        code = proc.wait(90)
        output = (tmp_path / "runner.log").read_text()
        # SIGKILL gives pytest no say: its servers die by their parent-death signal.
        assert code == (-signal.SIGKILL if signals == "SIGKILL" else pytest.ExitCode.INTERRUPTED), output
        deadline = time.monotonic() + 10  # the kernel delivers a parent's death signal soon after
        left = {pid: command for pid, (start, command) in started.items() if _alive(pid, start)}
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = {pid: command for pid, (start, command) in started.items() if _alive(pid, start)}
        assert not left, (left, output)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid, (start, _) in started.items():
            if _alive(pid, start):
                os.kill(pid, signal.SIGKILL)
        log.close()
