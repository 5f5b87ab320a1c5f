"""Sentence-transformers models on ONNX Runtime (or OpenVINO), without torch.

What TEI and infinity run on CPUs: the model's ONNX graph in ONNX Runtime, the
tokenizer from `tokenizers` (Rust), pooling and normalisation in numpy. The
worker process imports none of torch, transformers or sentence-transformers,
so it starts in about a second and holds the graph's weights and little else.

The graph comes from the model folder's `onnx/` subfolder (see
`lokal.engines.onnx_files`). When the export the config asks for is not there
yet, lokal makes it once, in a separate process that does import torch
(`python -m lokal.engines.onnx_export`, also behind `lokal models convert
FOLDER --to onnx`), and keeps it in the folder for the next load.

Same API and results as the torch engine: unit-length vectors, inputs longer than
the model's window cut to it (or refused when the config says truncate: false),
token ids decoded by the model's tokenizer, a cross-encoder's logits through its
activation; usage counts the tokens as that engine does.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from lokal.engines import onnx_files
from lokal.engines.base import Engine, Embeddings, EngineError, LoadOptions, ModelLoadError, Scores

log = logging.getLogger(__name__)

EXTRA_HINT = "pip install 'lokal[onnx]' (onnxruntime, tokenizers)"
OPENVINO_HINT = "pip install 'lokal[openvino]'"
BATCH = 32  # inputs per graph run (sorted by length, so each batch pads little)
EXPORT_TIMEOUT = 1800.0


def prepare() -> None:
    """Import what a load will need (a spare worker does this before it is given a model)."""
    import numpy  # noqa: F401
    import onnxruntime  # noqa: F401
    import tokenizers  # noqa: F401


class OnnxSession:
    """One graph ready to run: tokenizer, runtime session, and the work around the graph."""

    def __init__(self, path: Path, pipe: onnx_files.Pipeline, *, threads: int, runtime: str = "onnx") -> None:
        import numpy as np
        from tokenizers import Tokenizer

        self.np = np
        self.path = path
        self.pipe = pipe
        self.runtime = runtime
        self.tokenizer = Tokenizer.from_file(str(pipe.tokenizer))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        pad = self.tokenizer.token_to_id(pipe.pad_token) if pipe.pad_token else None
        self.pad_id = pad if pad is not None else 0
        if runtime == "openvino":
            self._run, self.inputs, outputs = _openvino(path, threads)
        else:
            self._run, self.inputs, outputs = _onnxruntime(path, threads)
        unknown = [name for name in self.inputs if name not in ("input_ids", "attention_mask", "token_type_ids")]
        if unknown or "input_ids" not in self.inputs:
            raise onnx_files.ExportProblem(f"{path.name} takes inputs lokal does not feed ({', '.join(self.inputs)})")
        wanted = [pipe.output] if pipe.output != onnx_files.TOKEN_OUTPUTS[0] else list(onnx_files.TOKEN_OUTPUTS)
        found = [name for name in wanted if name in outputs]
        if not found and pipe.output == onnx_files.TOKEN_OUTPUTS[0] and outputs:
            found = [outputs[0]]  # a transformer-only export: its first output is the token embeddings
        if not found:
            raise onnx_files.ExportProblem(f"{path.name} has no output {pipe.output!r} (it has: {', '.join(outputs)})")
        self.output = found[0]

    def encode(self, texts: list[Any], truncate: bool = True) -> list[Any]:
        """Encodings of texts (strings, or (query, document) pairs), cut to the window when asked."""
        if truncate:
            self.tokenizer.enable_truncation(max_length=self.pipe.window)
        try:
            return self.tokenizer.encode_batch(texts)
        finally:
            if truncate:
                self.tokenizer.no_truncation()

    def run(self, encodings: list[Any]) -> Any:
        """The graph's output for encodings, finished: unit vectors, or logits (rows in input order)."""
        np = self.np
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
        rows: list[Any] = [None] * len(encodings)
        for start in range(0, len(order), BATCH):
            chosen = order[start:start + BATCH]
            width = max(1, max(len(encodings[i].ids) for i in chosen))
            ids = np.full((len(chosen), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(chosen), width), dtype=np.int64)
            types = np.zeros((len(chosen), width), dtype=np.int64)
            for row, i in enumerate(chosen):
                enc = encodings[i]
                n = len(enc.ids)
                ids[row, :n] = enc.ids
                mask[row, :n] = 1
                types[row, :n] = enc.type_ids
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            out = self._run({name: feed[name] for name in self.inputs}, self.output)
            if self.pipe.output == onnx_files.SCORE_OUTPUT:
                result = out.reshape(len(chosen), -1)
            elif self.pipe.output == onnx_files.EMBEDDING_OUTPUT:
                result = onnx_files.normalize(out.astype(np.float32))
            else:
                result = onnx_files.normalize(onnx_files.pool(out.astype(np.float32), mask, self.pipe.pooling or []))
            for row, i in enumerate(chosen):
                rows[i] = result[row]
        return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)


def _onnxruntime(path: Path, threads: int) -> tuple[Any, list[str], list[str]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(feed: dict[str, Any], output: str) -> Any:
        return session.run([output], feed)[0]

    return run, [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]


def _openvino(path: Path, threads: int) -> tuple[Any, list[str], list[str]]:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads})
    inputs = [port.get_any_name() for port in compiled.inputs]
    outputs = [port.get_any_name() for port in compiled.outputs]
    lock = threading.Lock()
    request = compiled.create_infer_request()

    def run(feed: dict[str, Any], output: str) -> Any:
        with lock:
            result = request.infer(feed)
            return result[compiled.output(output)].copy()

    return run, inputs, outputs


def ensure_export(options: LoadOptions) -> None:
    """Make the export the options ask for when the folder does not have it (once: it is kept
    in the folder), in a process of its own: it imports torch, which this process never does."""
    folder = options.model_path
    if onnx_files.is_current(folder, options.quantization):
        return
    what = "int8 " if options.quantization == "int8" else ""
    log.info("%s: making its %sONNX export (once; kept in %s/%s)", folder.name, what, folder.name,
             onnx_files.ONNX_DIR)
    command = [sys.executable, "-m", "lokal.engines.onnx_export", str(folder), "--threads", str(options.threads)]
    if options.rerank:
        command.append("--rerank")
    if options.quantization == "int8":
        command.append("--int8")
    started = time.monotonic()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONIOENCODING="utf-8")
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              errors="replace", env=env, timeout=EXPORT_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ModelLoadError(f"{folder.name}: its ONNX export did not finish in {EXPORT_TIMEOUT:.0f}s") from exc
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        said = next((line.removeprefix("error: ") for line in reversed(lines) if line.startswith("error: ")),
                    lines[-1] if lines else f"exit status {done.returncode}")
        raise ModelLoadError(f"{folder.name} failed to load: its ONNX export failed: {said}")
    try:
        summary = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        summary = {}
    log.info("%s: ONNX export made in %.1fs%s", folder.name, time.monotonic() - started,
             f" (int8 vectors at cosine >= {summary['int8_min_cosine']:.4f} to float32's)"
             if summary.get("int8_min_cosine") else "")


class OnnxEngine(Engine):
    """An embedding model (or cross-encoder) folder on ONNX Runtime or OpenVINO."""

    def __init__(self, options: LoadOptions) -> None:
        runtime = options.runtime or "onnx"
        try:
            prepare()
            if runtime == "openvino":
                import openvino  # noqa: F401
        except ImportError as exc:
            hint = OPENVINO_HINT if runtime == "openvino" else EXTRA_HINT
            raise ModelLoadError(f"{options.model_path.name}: embeddings_backend {runtime} needs {hint} "
                                 f"({exc})") from exc
        self.options = options
        self.cross_encoder = options.rerank
        folder = options.model_path
        try:
            ensure_export(options)
            pipe = onnx_files.pipeline(folder, options.rerank)
            path = onnx_files.export_file(folder, options.quantization)
            self._session = OnnxSession(path, pipe, threads=options.threads, runtime=runtime)
        except onnx_files.ExportProblem as exc:
            raise ModelLoadError(f"{folder.name} failed to load: {exc}") from exc
        except ModelLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - the runtime's own words for a graph it cannot run
            raise ModelLoadError(f"{folder.name} failed to load on {runtime}: {type(exc).__name__}: {exc}") from exc
        self.window = pipe.window
        self._lock = threading.Lock()  # the runtime already uses every thread it was given
        self._dimensions: int | None = None
        if not self.cross_encoder:
            self._dimensions = int(self._session.run(self._session.encode(["dimensions"])).shape[1])
        log.info("loaded %s (%s, %s%s, %s dims, window %d)", folder.name,
                 "OpenVINO" if runtime == "openvino" else "ONNX Runtime", path.relative_to(folder),
                 ", int8" if options.quantization == "int8" else "",
                 self._dimensions if self._dimensions is not None else "-", self.window)

    @property
    def dimensions(self) -> int | None:
        return self._dimensions

    def embed(self, inputs: list[str] | list[list[int]], truncate: bool) -> Embeddings:
        if self.cross_encoder:
            raise EngineError(400, "this model is not an embedding model (it is a reranker)")
        session = self._session
        if inputs and isinstance(inputs[0], list):
            texts = [session.tokenizer.decode(ids, skip_special_tokens=True) for ids in inputs]  # type: ignore[arg-type]
        else:
            texts = list(inputs)  # type: ignore[arg-type]
        with self._lock:
            counts = [len(enc.ids) for enc in session.encode(texts, truncate=False)]
            longest = max(counts, default=0)
            if longest > self.window and not truncate:
                raise EngineError(400, f"An input is {longest} tokens, more than this model's "
                                       f"{self.window}-token window (the model's config sets truncate: false).")
            vectors = session.run(session.encode(texts, truncate=True))
        return Embeddings(vectors.tolist(), sum(min(c, self.window) for c in counts))

    def rerank(self, query: str, documents: list[str]) -> Scores:
        if not self.cross_encoder:
            raise EngineError(400, "this model is not a reranker")
        session = self._session
        pairs = [(query, doc) for doc in documents]
        with self._lock:
            encodings = session.encode(pairs, truncate=True)
            logits = session.run(encodings)
        scores = onnx_files.activate(logits, self._session.pipe.activation)
        values = scores.reshape(len(documents), -1)[:, -1].tolist()
        raw = logits.reshape(len(documents), -1)[:, -1].tolist()
        return Scores([float(v) for v in values], sum(len(enc.ids) for enc in encodings),
                      [float(v) for v in raw])

    def close(self) -> None:
        self.__dict__.pop("_session", None)
