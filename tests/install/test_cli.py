"""`lokal models install | search | rm` in subprocesses: progress bars on a pseudo-terminal,
plain lines otherwise, Ctrl-C cancels and the next run resumes."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.install.conftest import Fixture, blob, sha

GGUF = b"GGUF\x03\x00\x00\x00" + b"\x00" * 16


def _env(fixture: Fixture) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCALAI_", "MODELS_PATH"))}
    env.update(ALLOWED_DOWNLOAD_HOSTS="127.0.0.1", PYTHONUNBUFFERED="1",
               GALLERIES=f'[{{"name": "test", "url": "{fixture.base}/index.yaml"}}]')
    return env


def _gallery(fixture: Fixture, data: bytes, rate: int | None = None) -> None:
    url = fixture.add("/m.gguf", data, rate=rate)
    fixture.add("/index.yaml", yaml.safe_dump([{
        "name": "tiny", "description": "a tiny test model", "tags": ["chat"],
        "config_file": {"parameters": {"model": "m.gguf"}},
        "files": [{"filename": "m.gguf", "uri": url, "sha256": sha(data)}]}]).encode())


def lokal(*args: str) -> list[str]:
    return [sys.executable, "-m", "lokal", "models", *args]


def test_plain_output_search_install_and_rm(fixture: Fixture, tmp_path: Path) -> None:
    data = GGUF + blob(2 << 20)
    _gallery(fixture, data)
    models = tmp_path / "models"
    env = _env(fixture)
    found = subprocess.run(lokal("search", "tiny", "--models-path", str(models)), env=env,
                           capture_output=True, text=True, timeout=60)
    assert found.returncode == 0 and "test@tiny" in found.stdout and "a tiny test model" in found.stdout
    done = subprocess.run(lokal("install", "tiny", "--name", "t", "--models-path", str(models)), env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "downloading m.gguf (2.1 MB) [1/1]" in done.stderr and "m.gguf: done in" in done.stderr
    assert "\r" not in done.stderr
    assert "installed t" in done.stdout and (models / "m.gguf").read_bytes() == data
    again = subprocess.run(lokal("install", "tiny", "--name", "t", "--models-path", str(models)), env=env,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "--force" in again.stderr
    removed = subprocess.run(lokal("rm", "t", "--models-path", str(models)), env=env,
                             capture_output=True, text=True, timeout=60)
    assert removed.returncode == 0 and "removed m.gguf" in removed.stdout
    bad = subprocess.run(lokal("rm", "../etc", "--models-path", str(models)), env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "not a path" in bad.stderr


def test_a_terminal_gets_progress_bars_and_ctrl_c_resumes(fixture: Fixture, tmp_path: Path) -> None:
    data = GGUF + blob(4 << 20)
    _gallery(fixture, data, rate=2 << 20)
    models = tmp_path / "models"
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(lokal("install", "tiny", "--models-path", str(models)), env=_env(fixture),
                            stdin=secondary, stdout=secondary, stderr=secondary, close_fds=True)
    os.close(secondary)
    output = b""
    deadline = time.monotonic() + 30
    while b"ETA" not in output or output.count(b"\r") < 3:
        assert time.monotonic() < deadline, output
        ready, _, _ = select.select([primary], [], [], 0.5)
        if ready:
            output += os.read(primary, 65536)
    proc.send_signal(signal.SIGINT)
    while True:
        ready, _, _ = select.select([primary], [], [], 0.5)
        if not ready and proc.poll() is not None:
            break
        if ready:
            try:
                output += os.read(primary, 65536)
            except OSError:
                break
    assert proc.wait(30) == 130
    text = output.decode(errors="replace")
    assert "m.gguf" in text and "MB/s" in text and "%" in text and "cancelled" in text
    assert not (models / "m.gguf").exists() and not (models / "tiny.yaml").exists()
    kept = (models / ".m.gguf.partial").stat().st_size
    assert 0 < kept < len(data)
    time.sleep(0.5)
    served = fixture.state.served["/m.gguf"]
    fixture.state.behaviour["/m.gguf"].rate = None
    done = subprocess.run(lokal("install", "tiny", "--models-path", str(models)), env=_env(fixture),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (models / "m.gguf").read_bytes() == data
    assert fixture.state.served["/m.gguf"] - served <= len(data) - kept + (1 << 20)  # only the rest
