"""Which models exist, which are loaded, and when they load and unload.

A model loads on its first request (concurrent first requests load it once),
stays loaded, and is unloaded when idle past the watchdog timeout or when the
active-model limit needs room for another (least recently used first). A model
in use is never unloaded under a request.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lokal import logs
from lokal.backends.base import Backend, Embeddings, LoadOptions, ModelLoadError
from lokal.metrics import Metrics, ModelState, RegistryState
from lokal.errors import (ModelBusyError, ModelCapabilityError, ModelUnavailableError,
                          UnknownModelError)
from lokal.models import download
from lokal.models.config import ConfigError, ModelEntry, load_templates, scan_models
from lokal.models.embedding import EmbeddingBatcher
from lokal.models.files import ModelFile, ModelFileError, inspect, is_cross_encoder

log = logging.getLogger("lokal.models")

DEFAULT_CONTEXT = 4096


#: What a request needs from a model. A model that serves several purposes gets
#: one engine instance for each, so their caches never mix. "rerank" is served by
#: a native reranker where the model is one, else by the embedding instance.
PURPOSES = ("generate", "embed", "rerank", "transcribe")

_FILE_ENGINES = {"gguf": "llama-cpp", "hf": "sentence-transformers", "whisper-ct2": "whisper"}


def supported_purposes(model_file: ModelFile, embeddings: bool) -> set[str]:
    """What a model file can serve; `embeddings` is the config's flag for chat GGUFs."""
    if model_file.kind == "whisper-ct2":
        return {"transcribe"}
    if model_file.kind == "hf":
        return {"rerank"} if is_cross_encoder(model_file.hf_config) else {"embed", "rerank"}
    gguf = model_file.gguf
    assert gguf is not None
    if gguf.is_reranker:
        return {"rerank"}
    if gguf.is_encoder:
        return {"embed", "rerank"}
    return {"generate", "embed", "rerank"} if embeddings else {"generate"}


def native_reranker(model_file: ModelFile) -> bool:
    """Whether rerank runs on the model itself (else on embedding similarity)."""
    if model_file.kind == "hf":
        return is_cross_encoder(model_file.hf_config)
    return model_file.gguf is not None and model_file.gguf.is_reranker


@dataclass
class EngineDefaults:
    """Server-wide values a model config may override."""

    threads: int
    parallel: int
    context_size: int | None = None
    batch_embeddings: bool = True
    queue_size: int = 128
    prompt_cache_mb: int = 0


BackendFactory = Callable[[str, LoadOptions], Backend]


def default_backend_factory(engine: str, options: LoadOptions) -> Backend:
    """The engine module for an engine name; imported only when needed."""
    if engine == "llama-cpp":
        from lokal.backends.llamacpp import LlamaCppBackend

        return LlamaCppBackend(options)
    if engine == "sentence-transformers":
        from lokal.backends.sentence_transformers import SentenceTransformersBackend

        return SentenceTransformersBackend(options)
    if engine == "whisper":
        from lokal.backends.whisper import WhisperBackend

        return WhisperBackend(options)
    raise ModelLoadError(f"the {engine!r} backend is not available in this version of lokal")


def _size(path: Path | None) -> int | None:
    """Bytes of a model file or folder."""
    if path is None:
        return None
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size
    except OSError:
        return None


class _Loaded:
    def __init__(self, backend: Backend, batcher: EmbeddingBatcher | None = None) -> None:
        self.backend = backend
        self.batcher = batcher
        self.in_use = 0
        self.engine = ""
        self.last_used = time.monotonic()
        self.idle = asyncio.Event()
        self.idle.set()


class Lease:
    """A loaded model held for one request; release it when the response ends."""

    def __init__(self, registry: ModelRegistry, entry: ModelEntry, loaded: _Loaded) -> None:
        self.entry = entry
        self.backend = loaded.backend
        self._registry = registry
        self._loaded = loaded
        self._released = False

    async def embed(self, inputs: list[str] | list[list[int]]) -> Embeddings:
        """Embed with the leased model, batched with other requests when enabled."""
        truncate = self.entry.config.truncate if self.entry.config is not None else True
        batcher = self._loaded.batcher
        self._registry.metrics.embeddings(self.entry.name, len(inputs))  # metrics
        if batcher is not None and inputs and isinstance(inputs[0], str):
            return await batcher.embed(inputs)  # type: ignore[arg-type]
        self._registry.metrics.embedding_batch_ran(self.entry.name, len(inputs))  # metrics
        return await asyncio.to_thread(self.backend.embed, inputs, truncate)

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._loaded.in_use -= 1
        self._loaded.last_used = time.monotonic()
        if self._loaded.in_use == 0:
            self._loaded.idle.set()


class ModelRegistry:
    """The models folder as a set of named, lazily loaded models."""

    def __init__(self, models_path: Path, defaults: EngineDefaults, *,
                 config_file: Path | None = None, max_active: int = 0,
                 idle_timeout: float | None = None, busy_timeout: float | None = None,
                 backend_factory: BackendFactory = default_backend_factory) -> None:
        self.models_path = models_path
        self.config_file = config_file
        self.defaults = defaults
        self.max_active = max_active
        self.idle_timeout = idle_timeout
        self.busy_timeout = busy_timeout
        self._factory = backend_factory
        self._entries: dict[str, ModelEntry] = {}
        self._loaded: dict[tuple[str, str], _Loaded] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._capacity = asyncio.Lock()
        self._watchdog: asyncio.Task[None] | None = None
        self.metrics = Metrics()  # the app's replaces it (lokal.api.app)
        self.scan()

    # Discovery -------------------------------------------------------------

    def scan(self) -> list[ModelEntry]:
        entries = scan_models(self.models_path, self.config_file)
        self._entries = {e.name: e for e in entries}
        return entries

    @property
    def entries(self) -> list[ModelEntry]:
        return list(self._entries.values())

    def entry(self, name: str) -> ModelEntry:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownModelError(name) from None

    @property
    def loaded_count(self) -> int:
        return len(self._loaded)

    def is_loaded(self, name: str, purpose: str = "generate") -> bool:
        return (name, purpose) in self._loaded

    def snapshot(self) -> RegistryState:
        """Plain data about the loaded models, for the metrics' gauges."""
        state = RegistryState(known=len(self._entries))
        for (name, purpose), loaded in list(self._loaded.items()):
            entry = self._entries.get(name)
            path = entry.model_path if entry is not None else None
            options = getattr(loaded.backend, "options", None)
            state.loaded.append(ModelState(
                model=name, purpose=purpose, engine=loaded.engine,
                in_use=loaded.in_use, slots=loaded.backend.slots,
                memory_bytes=_size(getattr(options, "model_path", None) or path)))
        return state

    # Loading -----------------------------------------------------------------

    def load_options(self, entry: ModelEntry, purpose: str = "generate") -> tuple[str, LoadOptions]:
        """The engine and options for an entry, from its config, file and defaults."""
        config = entry.config
        assert config is not None and entry.model_path is not None
        try:
            model_file = inspect(entry.model_path)
        except ModelFileError as exc:
            raise ModelUnavailableError(entry.name, str(exc)) from exc
        file_engine = _FILE_ENGINES[model_file.kind]
        engine = config.engine or file_engine
        if engine != file_engine:
            raise ModelUnavailableError(entry.name, (
                f"backend {config.backend!r} cannot serve {entry.model_path.name}: it is "
                + {"gguf": "a GGUF file (use backend llama-cpp)",
                   "hf": "a Hugging Face model folder (use backend sentence-transformers, or "
                         "convert it with `lokal models convert`)",
                   "whisper-ct2": "a Whisper model (use backend whisper)"}[model_file.kind]))
        supported = supported_purposes(model_file, config.embeddings)
        if purpose == "rerank" and not native_reranker(model_file):
            purpose = "embed"  # similarity of embeddings, from the embedding instance
        if purpose not in supported:
            if purpose in ("embed", "rerank") and "generate" in supported:
                hint = (" It is a text-generation model: set `embeddings: true` in its config "
                        "to serve embeddings and rerank too.")
            elif "generate" not in supported and purpose == "generate":
                hint = " It serves: " + ", ".join(sorted(supported)) + "."
            else:
                hint = ""
            raise ModelCapabilityError(entry.name, purpose, hint)
        trained = model_file.gguf.context_length if model_file.gguf else None
        context = config.context_size or self.defaults.context_size
        if context is None:
            context = min(trained or DEFAULT_CONTEXT, DEFAULT_CONTEXT)
        if trained and context > trained:
            log.warning("model %s: context_size %d exceeds the %d tokens it was trained on",
                        entry.name, context, trained)
        options = LoadOptions(
            model_path=entry.model_path,
            context_size=context,
            threads=config.threads or self.defaults.threads,
            parallel=self.defaults.parallel,
            f16=config.f16,
            mmap=config.mmap,
            gpu_layers=config.gpu_layers,
            embeddings=purpose in ("embed", "rerank"),
            prompt_cache_mb=self.defaults.prompt_cache_mb,
            extra={"purpose": purpose},
        )
        return engine, options

    async def acquire(self, name: str, purpose: str = "generate") -> Lease:
        """The named model, loaded for purpose, held for one request."""
        entry = self.entry(name)
        logs.annotate(model=name)  # for the access log and request metrics
        if entry.error is not None:
            raise ModelUnavailableError(name, entry.error)
        if entry.pending_downloads or entry.templates_pending:
            await self._fetch(entry)
        if purpose == "rerank":
            purpose = self.rerank_purpose(entry)
        key = (name, purpose)
        loaded = self._loaded.get(key)
        if loaded is None:
            lock = self._locks.setdefault(key, asyncio.Lock())
            async with lock:
                loaded = self._loaded.get(key)
                if loaded is None:
                    loaded = await self._load(entry, purpose)
        limit = self.defaults.parallel + self.defaults.queue_size
        if purpose == "generate" and loaded.in_use >= limit:
            raise ModelBusyError(name, limit)
        loaded.in_use += 1
        loaded.idle.clear()
        loaded.last_used = time.monotonic()
        return Lease(self, entry, loaded)

    async def _fetch(self, entry: ModelEntry) -> None:
        """Download the files the entry's config names by URL, once however many
        requests wait for them; a failure is the request's error and the next
        request tries again."""
        for item in entry.pending_downloads:
            # One lock per file: models sharing a file fetch it once too.
            async with self._locks.setdefault(("download", str(item.path)), asyncio.Lock()):
                try:
                    if await asyncio.to_thread(download.fetch, item):  # a no-op once it is there
                        self.metrics.downloaded(entry.name, item.path.stat().st_size)  # metrics
                except download.DownloadError as exc:
                    self.metrics.downloaded(entry.name, None)  # metrics
                    log.error("model %s: %s", entry.name, exc)
                    raise ModelUnavailableError(entry.name, str(exc)) from exc
        async with self._locks.setdefault((entry.name, "templates"), asyncio.Lock()):
            if entry.templates_pending and entry.config is not None:
                try:
                    entry.templates = load_templates(self.models_path, entry.config)
                except ConfigError as exc:
                    raise ModelUnavailableError(entry.name, str(exc)) from exc
                entry.templates_pending = False

    async def _load(self, entry: ModelEntry, purpose: str) -> _Loaded:
        engine, options = self.load_options(entry, purpose)
        await self._make_room()
        started = time.monotonic()
        log.info("loading model %s from %s (%s)", entry.name, options.model_path.name, engine)
        try:
            backend = await asyncio.to_thread(self._factory, engine, options)
        except ModelLoadError as exc:
            self.metrics.model_load_failed(entry.name, purpose)  # metrics
            log.error("model %s failed to load: %s", entry.name, exc)
            raise ModelUnavailableError(entry.name, str(exc)) from exc
        batcher = None
        if purpose == "embed" and self.defaults.batch_embeddings:
            truncate = entry.config.truncate if entry.config is not None else True
            batcher = EmbeddingBatcher(backend, truncate, on_batch=functools.partial(
                self.metrics.embedding_batch_ran, entry.name))  # metrics
        loaded = _Loaded(backend, batcher)
        loaded.engine = engine  # metrics
        self._loaded[(entry.name, purpose)] = loaded
        self.metrics.model_loaded(entry.name, purpose, time.monotonic() - started)  # metrics
        log.info("model %s ready in %.1fs", entry.name, time.monotonic() - started)
        return loaded

    async def _make_room(self) -> None:
        """Unload least recently used models until one more fits under the limit."""
        if self.max_active <= 0:
            return
        async with self._capacity:
            while len(self._loaded) >= self.max_active:
                key, victim = min(self._loaded.items(), key=lambda item: item[1].last_used)
                await victim.idle.wait()
                if self._loaded.get(key) is victim and victim.in_use == 0:
                    log.info("unloading model %s (%s) to make room (MAX_ACTIVE_BACKENDS=%d)",
                             key[0], key[1], self.max_active)
                    self.metrics.model_evicted(*key)  # metrics
                    await self._unload(key)

    def retire(self, lease: Lease) -> None:
        """Take a model that stopped responding out of service: new requests get a
        fresh instance; the old one is freed once its engine calls have returned."""
        key = next((k for k, v in self._loaded.items() if v is lease._loaded), None)
        if key is None:
            return
        victim = self._loaded.pop(key)
        self.metrics.worker_restarted(*key)  # metrics
        self.metrics.model_unloaded(*key)  # metrics
        log.error("model %s (%s) stopped responding: retired, will reload on the next request",
                  key[0], key[1])

        async def close_when_idle() -> None:
            await victim.idle.wait()
            await asyncio.to_thread(victim.backend.close)

        asyncio.get_running_loop().create_task(close_when_idle())

    async def _unload(self, key: tuple[str, str]) -> None:
        loaded = self._loaded.pop(key, None)
        if loaded is not None:
            self.metrics.model_unloaded(*key)  # metrics
            await asyncio.to_thread(loaded.backend.close)

    async def unload(self, name: str) -> bool:
        """Unload a model once its requests are done; False if it was not loaded."""
        keys = [key for key in self._loaded if key[0] == name]
        for key in keys:
            loaded = self._loaded.get(key)
            if loaded is not None:
                await loaded.idle.wait()
                await self._unload(key)
        if keys:
            log.info("unloaded model %s", name)
        return bool(keys)

    def rerank_purpose(self, entry: ModelEntry) -> str:
        """Rerank runs on a native reranker instance, or on the embedding one."""
        assert entry.model_path is not None
        try:
            model_file = inspect(entry.model_path)
        except ModelFileError as exc:
            raise ModelUnavailableError(entry.name, str(exc)) from exc
        return "rerank" if native_reranker(model_file) else "embed"

    def default_purpose(self, name: str) -> str:
        """What a model is mainly for: embeddings-only models preload as such."""
        entry = self.entry(name)
        for purpose in ("generate", "embed", "rerank", "transcribe"):
            try:
                self.load_options(entry, purpose)
            except ModelCapabilityError:
                continue
            return purpose
        return "generate"

    async def preload(self, names: list[str]) -> None:
        for name in names:
            try:
                lease = await self.acquire(name, self.default_purpose(name))
            except (UnknownModelError, ModelUnavailableError, ModelCapabilityError) as exc:
                log.error("preload of %r failed: %s", name, exc)
                continue
            lease.release()

    # Watchdog ----------------------------------------------------------------

    def start_watchdog(self) -> None:
        if self.idle_timeout and self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch_idle(self.idle_timeout))

    async def _watch_idle(self, timeout: float) -> None:
        interval = max(0.2, min(timeout / 4, 30.0))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for key, loaded in list(self._loaded.items()):
                if loaded.in_use == 0 and now - loaded.last_used >= timeout:
                    log.info("unloading model %s (%s): idle for %.0fs (WATCHDOG_IDLE_TIMEOUT)",
                             key[0], key[1], now - loaded.last_used)
                    await self._unload(key)

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        for key in list(self._loaded):
            await self._unload(key)
