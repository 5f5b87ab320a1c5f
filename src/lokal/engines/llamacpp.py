"""GGUF models through xllamacpp: llama.cpp's own server engine, in-process.

One `xllamacpp.Server` per loaded model gives continuous batching over
`parallel` slots and prompt caching. Engine traps this module guards against
(see shared notes on engine facts): encoder (BERT-style) GGUFs abort the whole
process unless built in embedding mode; load failures only say "Failed to init
server", the cause being in llama.cpp's log; some bad bodies raise instead of
returning an error dict.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import threading
from typing import Any

from lokal import threadnames
from lokal.engines import engine_log
from lokal.engines.base import (Engine, ChunkSink, Embeddings, EngineError, LoadOptions,
                                ModelLoadError, Scores)
from lokal.errors import INFILL_NOT_SUPPORTED
from lokal.formats.modelfile import GGUFInfo, ModelFileError, read_gguf

log = logging.getLogger(__name__)

# Loads are serialized: they are memory- and CPU-bound, and the engine log read
# after a failed load must belong to that load.
_load_lock = threading.Lock()
# How the engine says an embedding input is over its window (it carries the count).
_TOO_LARGE = re.compile(r"input \((\d+) tokens\) is too large")


def _import_engine() -> Any:
    try:
        import xllamacpp
    except ImportError as exc:  # pragma: no cover - a hard dependency
        raise ModelLoadError(f"xllamacpp is not installed ({exc}); pip install xllamacpp") from exc
    return xllamacpp


def prepare() -> None:
    """Import what a load will need (a spare worker does this before it is given a model)."""
    _import_engine()


_MAX_CONTEXT = 2**31 - 1  # llama.cpp's n_ctx is a 32-bit int
#: Prompt tokens per engine step when the config names no batch. The engine checks for a
#: cancelled request between steps (lokal asks for a progress chunk after each one, and the
#: chunk's answer is the stop), so this bounds how long a client that left holds its slot:
#: llama.cpp's own default (2048) is minutes of a big model's prefill on a CPU.
DEFAULT_BATCH = 512
DEFAULT_UBATCH = 512
_FLASH = {"auto": "AUTO", "on": "ENABLED", "off": "DISABLED"}
_GENERIC = re.compile(r"failed to load model|exiting due to|failed to init|error loading model$")


def _load_failure(lines: list[tuple[str, str]], folder: str) -> str:
    """The engine's own words for why a load failed: its specific reasons first,
    the generic "failed to load" lines only when nothing else was said."""
    keywords = ("failed", "error", "not within", "invalid", "unable", "cannot", "out of memory")
    picked = [text for level, text in lines if level == "E" or any(k in text.lower() for k in keywords)]
    seen: list[str] = []
    for text in picked:
        short = text.split(": ", 2)[-1] if text.count(": ") >= 2 else text
        short = short.replace(folder.rstrip("/") + "/", "")  # no server paths for clients
        if short not in seen:
            seen.append(short)
    specific = [text for text in seen if not _GENERIC.search(text)]
    return "; ".join((specific or seen)[:4])


def _header(options: LoadOptions) -> GGUFInfo:
    """The model's GGUF header (read at scan; here only when the options lack it), refusing
    what would abort the process."""
    info = options.gguf
    if info is None:
        try:
            info = read_gguf(options.model_path)
        except ModelFileError as exc:
            raise ModelLoadError(str(exc)) from exc
    if info.is_encoder and not options.embeddings:
        # Building a generating engine for an encoder aborts the process.
        raise ModelLoadError(
            f"{options.model_path.name} is an embedding model ({info.architecture}); "
            "it cannot chat or complete. Serve it with `embeddings: true` and call /v1/embeddings."
        )
    return info


def _engine_params(xllamacpp: Any, options: LoadOptions, info: GGUFInfo, loopback_key: str) -> Any:
    """The engine's CommonParams for options."""
    params = xllamacpp.CommonParams()
    params.model.path = str(options.model_path)
    if options.mmproj_path is not None:
        params.mmproj.path = str(options.mmproj_path)
    params.n_parallel = options.parallel
    if options.embeddings:
        # No KV cache to speak of: one pool, each input up to the window.
        params.n_ctx = options.context_size
        params.kv_unified = True
    else:
        # Every slot gets a whole context of its own (as Ollama sizes NUM_PARALLEL x
        # context): with one shared pool, a few long prompts at once (RAG traffic)
        # filled it and every one of them failed, and a greedy answer depended on
        # what else was cached.
        total = options.context_size * options.parallel
        if total > _MAX_CONTEXT:
            raise ModelLoadError(
                f"{options.model_path.name}: context_size {options.context_size} x {options.parallel} "
                f"slots is {total} tokens of KV cache, more than llama.cpp can address ({_MAX_CONTEXT}); "
                "lower context_size or PARALLEL_REQUESTS.")
        params.n_ctx = total
        params.kv_unified = False
    params.cont_batching = True
    params.cache_prompt = True
    # A request goes to the idle slot whose cached prompt shares the most with its own (when
    # over a tenth of it), so an agent's next turn finds its prefix; other requests take
    # the least recently used slot. llama.cpp's default, stated: lokal depends on it.
    params.slot_prompt_similarity = 0.1
    # llama.cpp's default keeps up to 8 GiB of saved slot states in RAM per model,
    # growing with every finished request; lokal bounds it (PROMPT_CACHE_RAM).
    params.cache_ram_mib = options.prompt_cache_mb
    params.use_jinja = True
    params.cpuparams.n_threads = options.threads
    params.cpuparams_batch.n_threads = options.threads
    # The loopback listener answers tokenize/apply-template (token counts) and streams
    # /infill: a thread per slot and one more, so a long infill never holds up a count.
    params.n_threads_http = options.parallel + 1
    params.api_keys = [loopback_key]
    if not options.embeddings:
        params.n_batch, params.n_ubatch = batch_sizes(options)
    if options.embeddings:
        # A whole input must fit one micro-batch; vectors come back unit length.
        params.embedding = True
        params.n_batch = params.n_ubatch = options.context_size
        pooling = info.pooling_type
        if options.rerank:  # the classification head scores pairs (llama-server --reranking)
            pooling = int(xllamacpp.llama_pooling_type.LLAMA_POOLING_TYPE_RANK)
        elif pooling is None:
            pooling = int(xllamacpp.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN)
        params.pooling_type = xllamacpp.llama_pooling_type(pooling)
    if options.speculative is not None and not options.embeddings:
        _speculate(xllamacpp, params, options)
    fmt = options.engine_params.get("reasoning_format")
    if fmt is not None:  # how llama.cpp splits <think> blocks into reasoning_content
        params.reasoning_format = getattr(xllamacpp.common_reasoning_format,
                                          "COMMON_REASONING_FORMAT_" + fmt.upper().replace("-", "_"))
    if options.gpu_layers is not None:
        params.n_gpu_layers = options.gpu_layers
    if options.mmap is False:
        params.load_mode = xllamacpp.llama_load_mode.LLAMA_LOAD_MODE_NONE
    default_cache = "f32" if options.f16 is False else None
    for side, name in (("k", options.cache_type_k or default_cache), ("v", options.cache_type_v or default_cache)):
        if name is not None:
            setattr(params, f"cache_type_{side}", getattr(xllamacpp.ggml_type, f"GGML_TYPE_{name.upper()}"))
    if options.flash_attention is not None:
        params.flash_attn_type = getattr(xllamacpp.llama_flash_attn_type,
                                         f"LLAMA_FLASH_ATTN_TYPE_{_FLASH[options.flash_attention]}")
    return params


def check_cache_types(options: LoadOptions) -> None:
    """Refuse what llama.cpp refuses, saying why: a quantised V cache is read only by the
    flash-attention kernels."""
    quantized_v = (options.cache_type_v or "f16") not in ("f32", "f16", "bf16")
    if quantized_v and options.flash_attention == "off":
        raise ModelLoadError(
            f"{options.model_path.name}: cache_type_v {options.cache_type_v} needs flash attention, "
            "but the config sets flash_attention: off (llama.cpp reads a quantised V cache only with "
            "flash attention); set flash_attention: on or auto, or cache_type_v: f16")


def batch_sizes(options: LoadOptions) -> tuple[int, int]:
    """(n_batch, n_ubatch) of a generating instance: the config's batch, else DEFAULT_BATCH;
    micro-batches no larger than the batch."""
    batch = options.batch or DEFAULT_BATCH
    return batch, min(options.ubatch or DEFAULT_UBATCH, batch)


class LlamaCppEngine(Engine):
    """A GGUF model served by one in-process llama.cpp server engine."""

    def __init__(self, options: LoadOptions) -> None:
        self.options = options
        self.info = info = _header(options)
        check_cache_types(options)
        self.slots = options.parallel
        self.ranks = options.rerank
        xllamacpp = _import_engine()
        # The engine also listens on a loopback port; a random key closes that side door.
        self._loopback_key = secrets.token_urlsafe(32)
        params = _engine_params(xllamacpp, options, info, self._loopback_key)
        capture = engine_log.install()
        with _load_lock:
            mark = capture.mark()
            try:
                with threadnames.named(threadnames.ENGINE):  # the engine's threads keep the name
                    self._server = xllamacpp.Server(params)
            except (RuntimeError, ValueError) as exc:
                # Give the reader thread a moment to drain what the engine wrote.
                threading.Event().wait(0.05)
                reason = _load_failure(capture.since(mark), str(options.model_path.parent)) or str(exc)
                raise ModelLoadError(f"{options.model_path.name} failed to load: {reason}") from exc
        extras = []
        if options.cache_type_k or options.cache_type_v:
            extras.append(f"KV cache {options.cache_type_k or 'f16'}/{options.cache_type_v or 'f16'}")
        if options.flash_attention:
            extras.append(f"flash attention {options.flash_attention}")
        if options.mmproj_path:
            extras.append(f"images via {options.mmproj_path.name}")
        log.info("loaded %s (%s, context %d, %d slots, %d threads%s)", options.model_path.name,
                 info.architecture, options.context_size, options.parallel, options.threads,
                 "".join(", " + extra for extra in extras))

    def _stream(self, handler: Any, body: dict[str, Any], sink: ChunkSink) -> None:
        error: dict[str, Any] | None = None

        def on_chunk(chunk: dict[str, Any] | None) -> bool:
            nonlocal error
            if not isinstance(chunk, dict):  # the engine sends a None first for prompt lists
                return False
            if "error" in chunk:
                error = chunk["error"]
                return True
            progress = chunk.get("prompt_progress")
            if progress is not None:
                # One per prompt batch: the engine's only word while it reads a long prompt, and
                # the sink's answer is the only way to stop it then (the binding never checks
                # for a client that left on its own). The sink gets the progress alone.
                return sink({"prompt_progress": progress})
            return sink(chunk)

        body = dict(body, stream=True, stream_options={"include_usage": True}, return_progress=True)
        try:
            result = handler(body, on_chunk)
        except (ValueError, TypeError) as exc:
            raise EngineError(400, str(exc), "invalid_request_error") from exc
        if isinstance(result, dict) and "error" in result:
            error = result["error"]
        if error is not None:
            raise EngineError.from_dict(error)

    def chat(self, body: dict[str, Any], sink: ChunkSink, *, streamed: bool = True) -> None:
        self._stream(self._server.handle_chat_completions, body, sink)

    def complete(self, body: dict[str, Any], sink: ChunkSink, *, streamed: bool = True) -> None:
        self._stream(self._server.handle_completions, body, sink)

    def count_tokens(self, body: dict[str, Any]) -> int | None:
        # The engine's own template and tokenizer, through its loopback listener (the
        # Server object has no tokenize handler): exact, and no prompt is evaluated.
        prompt = body.get("prompt")
        if prompt is None:
            prompt = self.render_prompt(body)
        if not isinstance(prompt, str):
            return None
        return len(self._loopback("/tokenize", {"content": prompt, "add_special": True})["tokens"])

    def render_prompt(self, body: dict[str, Any]) -> str:
        """The prompt the engine's chat template makes of a chat body (its messages, and
        its tools when the model gets them in its own format)."""
        payload = {key: body[key] for key in ("messages", "tools", "tool_choice", "parallel_tool_calls")
                   if key in body}
        return str(self._loopback("/apply-template", payload)["prompt"])

    def _loopback(self, path: str, payload: dict[str, Any] | None) -> Any:
        """POST payload (GET when None) to the engine's own loopback listener; its JSON answer."""
        import json
        import urllib.error

        try:
            with self._open_loopback(path, payload, timeout=60) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            try:
                error = json.loads(exc.read()).get("error") or {}
            except ValueError:
                error = {}
            raise EngineError(exc.code if exc.code < 500 else 500,
                              str(error.get("message") or f"the engine answered {exc.code}")) from exc
        except OSError as exc:
            raise EngineError(500, f"the engine's tokenizer could not be reached: {exc}") from exc

    def _open_loopback(self, path: str, payload: dict[str, Any] | None, timeout: float | None) -> Any:
        import json
        import urllib.request

        address = self._server.listening_address
        base = address if address.startswith("http") else f"http://{address}"
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(base + path, data=data, method="POST" if data is not None else "GET",
                                         headers={"Authorization": f"Bearer {self._loopback_key}",
                                                  "Content-Type": "application/json"})
        return urllib.request.urlopen(request, timeout=timeout)

    def text_op(self, op: str, payload: dict[str, Any]) -> Any:
        if op in ("props", "slots"):
            return self._loopback("/" + op, None)
        if op in ("tokenize", "detokenize", "apply-template"):
            return self._loopback("/" + op, payload)
        return super().text_op(op, payload)

    def infill(self, body: dict[str, Any], sink: ChunkSink, *, streamed: bool = True) -> None:
        """The engine's own /infill (its FIM tokens and format, and its refusal for a model
        without them), read as it streams: llama-server's chunks in the text-completion shape;
        the sink's True closes the connection, which stops the engine."""
        import json
        import urllib.error

        try:
            answer = self._open_loopback("/infill", dict(body, stream=True), timeout=None)
        except urllib.error.HTTPError as exc:
            try:
                error = json.loads(exc.read()).get("error") or {}
            except ValueError:
                error = {}
            if exc.code == 501:  # the engine's word for a vocabulary without FIM tokens
                raise EngineError(400, str(error.get("message") or "infill is not supported"),
                                  INFILL_NOT_SUPPORTED) from exc
            raise EngineError.from_dict(error if isinstance(error, dict) and error.get("code")
                                        else {"code": exc.code, "message": f"the engine answered {exc.code}"}) from exc
        except OSError as exc:
            raise EngineError(500, f"the engine could not be reached: {exc}") from exc
        with answer:
            for raw in answer:
                if not raw.startswith(b"data: "):
                    continue
                chunk = json.loads(raw[6:])
                if "error" in chunk:
                    raise EngineError.from_dict(chunk["error"])
                if sink(_completion_chunk(chunk)):
                    return
                if chunk.get("stop"):
                    return

    @property
    def dimensions(self) -> int | None:
        value = self.info.arch_value("embedding_length")
        return int(value) if isinstance(value, int) else None

    def embed(self, inputs: list[str] | list[list[int]], truncate: bool) -> Embeddings:
        result = self._server.handle_embeddings({"input": inputs})
        error = result.get("error") if isinstance(result, dict) else None
        if error is None:
            data = sorted(result["data"], key=lambda item: item["index"])
            return Embeddings([item["embedding"] for item in data],
                              int(result.get("usage", {}).get("prompt_tokens", 0)))
        too_large = _TOO_LARGE.search(str(error.get("message", "")))
        if too_large is None:
            raise EngineError.from_dict(error)
        if len(inputs) > 1:  # find and cut the long ones, one by one
            parts = [self.embed([item], truncate) for item in inputs]  # type: ignore[list-item]
            return Embeddings([p.vectors[0] for p in parts], sum(p.prompt_tokens for p in parts))
        tokens, window = int(too_large.group(1)), self.options.context_size
        if not truncate:
            raise EngineError(400, f"The input is {tokens} tokens, more than this model's "
                                   f"{window}-token window (the model's config sets truncate: false).")
        return self.embed([_shorten(inputs[0], tokens, window)], truncate)  # type: ignore[list-item]

    def rerank(self, query: str, documents: list[str]) -> Scores:
        result = self._server.handle_rerank({"query": query, "documents": documents,
                                             "top_n": len(documents)})
        if isinstance(result, dict) and "error" in result:
            raise EngineError.from_dict(result["error"])
        items = result.get("results", result) if isinstance(result, dict) else result
        scores = [0.0] * len(documents)
        for item in items:
            scores[int(item["index"])] = float(item["relevance_score"])
        raw = None
        if self.info.is_encoder:
            # A cross-encoder's head gives a logit; sentence-transformers' CrossEncoder and
            # FlagEmbedding map it to [0, 1] with a sigmoid, and so does lokal, so that
            # the same model scores the same through either engine (and Dify's score
            # threshold means something). Qwen3-style rerankers come back as
            # probabilities already.
            raw, scores = scores, [_sigmoid(s) for s in scores]
        usage = result.get("usage", {}) if isinstance(result, dict) else {}
        return Scores(scores, int(usage.get("total_tokens", 0)), raw)

    def close(self) -> None:
        server = self.__dict__.pop("_server", None)
        del server  # the engine's destructor stops its loop and frees the model


_SPECULATIVE = {"draft": "DRAFT_SIMPLE", "ngram_simple": "NGRAM_SIMPLE", "ngram_map_k": "NGRAM_MAP_K",
                "ngram_map_k4v": "NGRAM_MAP_K4V", "ngram_mod": "NGRAM_MOD", "ngram_cache": "NGRAM_CACHE",
                "draft_mtp": "DRAFT_MTP", "draft_dflash": "DRAFT_DFLASH", "draft_eagle3": "DRAFT_EAGLE3"}


def _speculate(xllamacpp: Any, params: Any, options: LoadOptions) -> None:
    """Speculative decoding as the config asks: a draft model, or one of the n-gram modes."""
    values = dict(options.speculative or {})
    kind = values.pop("type")
    spec = params.speculative
    engine_type = getattr(xllamacpp.common_speculative_type, "COMMON_SPECULATIVE_TYPE_" + _SPECULATIVE[kind], None)
    if engine_type is None:  # never a silent fallback to no speculation
        raise ModelLoadError(f"{options.model_path.name}: speculative decoding {kind!r} is not supported by "
                             "this version of the llama.cpp engine (xllamacpp)")
    spec.types = [engine_type]
    if kind.startswith("draft"):
        target = spec.draft
        if options.draft_path is not None:  # MTP without one uses the model's own head
            target.mparams.path = str(options.draft_path)
        target.cpuparams.n_threads = options.threads
        target.cpuparams_batch.n_threads = options.threads
        if options.gpu_layers is not None:
            target.n_gpu_layers = options.gpu_layers
    elif kind == "ngram_cache":
        target = spec.ngram_cache
    else:
        target = getattr(spec, kind)
    for name, value in values.items():
        if hasattr(target, name):
            setattr(target, name, value)
        elif hasattr(spec.draft, name):
            setattr(spec.draft, name, value)


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def _shorten(item: str | list[int], tokens: int, window: int) -> str | list[int]:
    """An input cut to fit window tokens: token ids exactly, text by its token density."""
    if isinstance(item, list):
        return item[:window]
    keep = max(1, int(len(item) * window / tokens * 0.95))
    return item[:min(keep, len(item) - 1)]


def _completion_chunk(chunk: dict[str, Any]) -> dict[str, Any]:
    """A chunk of llama-server's native stream (/infill) in the text-completion shape."""
    finish = None
    out: dict[str, Any] = {"object": "text_completion"}
    if chunk.get("stop"):
        finish = "length" if chunk.get("stop_type") == "limit" else "stop"
        timings = chunk.get("timings") or {}
        prompt = int(chunk.get("tokens_evaluated") or timings.get("prompt_n") or 0)
        completion = int(chunk.get("tokens_predicted") or timings.get("predicted_n") or 0)
        out["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion,
                        "total_tokens": prompt + completion,
                        "prompt_tokens_details": {"cached_tokens": int(timings.get("cache_n") or 0)}}
    out["choices"] = [{"index": 0, "text": chunk.get("content") or "", "logprobs": None,
                       "finish_reason": finish}]
    for key in ("prompt_progress", "timings"):  # as the engine's completion chunks carry them
        if chunk.get(key):
            out[key] = chunk[key]
    return out
