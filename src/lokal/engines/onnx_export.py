"""Export a sentence-transformers folder to ONNX, and quantise the export to int8.

Run as its own process (`python -m lokal.engines.onnx_export FOLDER [--rerank]
[--int8]`): the ONNX engine starts it when a folder lacks the export a config
asks for, and `lokal models convert FOLDER --to onnx` runs the same. It imports
torch and sentence-transformers, which the serving process never does.

- **The float export** traces the whole model as sentence-transformers runs it
  (transformer, pooling, any dense layer and normalisation) into one graph whose
  output is the sentence embedding; a cross-encoder's graph gives its logits.
  Attention is traced in its plain ("eager") form. The export is checked against
  torch on a set of probe sentences before it is kept.
- **int8** quantises the weights of the graph's matrix products (per output
  channel, activations quantised on the fly: ONNX Runtime's dynamic quantisation),
  then compares the vectors with float32's on the probe sentences. When the
  worst cosine is under 0.99 it tries unsigned weights (CPUs without VNNI
  saturate on signed ones), then keeps the products int8 hurts most in float32
  (the first layer's, the feed-forward down projections), measuring each.

Nothing is half-written: every file goes to a hidden temporary name in `onnx/`
and is renamed into place whole; `onnx/lokal.json` (what the graph computes,
its window, the weights it came from, the int8 result) is written last. An
exclusive lock on `onnx/.export.lock` keeps two exports of a folder apart.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lokal.engines import onnx_files
from lokal.engines.onnx import OnnxSession

INT8_MIN_COSINE = 0.99      # the int8 export's vectors against float32's, worst probe sentence
FLOAT_MIN_COSINE = 0.9999   # the float export's against torch's
OPSET = 17
_LAYER = re.compile(r"(?:^|[/.])layers?[._](\d+)[/.]")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[Path]:
    import fcntl

    target = folder / onnx_files.ONNX_DIR
    try:
        target.mkdir(exist_ok=True)
        handle = open(target / ".export.lock", "a+b")  # noqa: SIM115 - held for the block
    except OSError as exc:
        raise onnx_files.ExportProblem(
            f"cannot write the ONNX export into {target}: {exc.strerror or exc}; make the folder writable "
            "or set embeddings_backend: torch") from exc
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield target


def _temp(target: Path, name: str) -> Path:
    # Hidden and not ending in .onnx: nothing takes it for an export while it is written.
    return target / f".{name}.{secrets.token_hex(4)}.part"


def _write_meta(folder: Path, meta: dict[str, Any]) -> None:
    target = folder / onnx_files.ONNX_DIR
    temp = _temp(target, onnx_files.META_FILE)
    temp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    os.replace(temp, target / onnx_files.META_FILE)


def _check_source(folder: Path) -> None:
    if not folder.is_dir():
        raise onnx_files.ExportProblem(f"{folder} is not a model folder")
    if not (folder / "config.json").is_file():
        raise onnx_files.ExportProblem(f"{folder.name} has no config.json: not a Hugging Face model folder")
    if not onnx_files.source_stamp(folder):
        raise onnx_files.ExportProblem(f"{folder.name} has no weights (*.safetensors or pytorch_model.bin) "
                                       "to export")


@dataclasses.dataclass
class _Traceable:
    """A loaded model, made ready for torch.onnx.export."""

    model: Any          # the sentence-transformers object (CrossEncoder or SentenceTransformer)
    graph: Any          # the torch module to trace: tensors in, the graph's one output out
    sample: Any         # tokenised sample inputs to trace with
    names: list[str]    # the graph's input names, in the order graph takes them
    output: str         # the graph's output name
    window: int
    activation: str | None  # a cross-encoder's scoring activation, applied outside the graph


def _cross_encoder(folder: Path, eager: dict[str, str]) -> _Traceable:
    import torch
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(folder), device="cpu", local_files_only=True, model_kwargs=eager)
    kinds = [type(module).__name__ for module in model]
    if kinds != ["Transformer"]:
        raise onnx_files.ExportProblem(f"{folder.name}: a cross-encoder with modules {kinds} is not "
                                       "exported (only a transformer with its scoring head)")
    window = int(getattr(model, "max_seq_length", None) or 512)
    activation_fn = model.activation_fn
    activation = onnx_files.activation_name(f"{type(activation_fn).__module__}.{type(activation_fn).__name__}")
    if activation not in onnx_files.ACTIVATIONS:
        raise onnx_files.ExportProblem(f"{folder.name}: its activation {type(activation_fn).__name__} is "
                                       "not one lokal applies outside torch")
    sample = model.tokenizer([("what is a lighthouse", "a tower with a light"), ("a", "b c")],
                             padding=True, truncation=True, return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]
    network = model.model

    class Graph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = network

        def forward(self, *tensors: Any) -> Any:
            return self.network(**dict(zip(names, tensors))).logits

    return _Traceable(model, Graph(), sample, names, onnx_files.SCORE_OUTPUT, window, activation)


def _embedder(folder: Path, eager: dict[str, str]) -> _Traceable:
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu", local_files_only=True, model_kwargs=eager)
    window = int(model.max_seq_length or onnx_files.DEFAULT_WINDOW)
    sample = model.tokenize(["hello world", "a somewhat longer sentence, to pad the other one"])
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]
    pipeline = model

    class Graph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pipeline = pipeline

        def forward(self, *tensors: Any) -> Any:
            return self.pipeline(dict(zip(names, tensors)))[onnx_files.EMBEDDING_OUTPUT]

    return _Traceable(model, Graph(), sample, names, onnx_files.EMBEDDING_OUTPUT, window, None)


def _tokenizer_file(folder: Path, target: Path, tokenizer: Any) -> Path:
    """The folder's tokenizer.json, or one saved from its fast tokenizer into target."""
    if not getattr(tokenizer, "is_fast", False):
        raise onnx_files.ExportProblem(f"{folder.name}: its tokenizer has no fast (tokenizers) form, which "
                                       "the ONNX engine needs")
    if (folder / "tokenizer.json").is_file():
        return folder / "tokenizer.json"
    temp = _temp(target, "tokenizer.json")
    tokenizer.backend_tokenizer.save(str(temp))
    os.replace(temp, target / "tokenizer.json")
    return target / "tokenizer.json"


def _check_against_torch(traced: _Traceable, session: OnnxSession, *, rerank: bool) -> dict[str, Any]:
    """Run the probe texts through torch and through the export: the note's fields that say how
    close they came; an ExportProblem when too far apart."""
    import numpy as np
    import torch

    model = traced.model
    if rerank:
        pairs = list(zip(onnx_files.PROBE_TEXTS, reversed(onnx_files.PROBE_TEXTS)))
        theirs = model.predict(pairs, activation_fn=torch.nn.Identity(), show_progress_bar=False,
                               convert_to_numpy=True)
        ours = session.run(session.encode(pairs))
        worst = float(np.max(np.abs(np.asarray(theirs).reshape(len(pairs), -1) - ours)))
        if worst > 1e-3:
            raise onnx_files.ExportProblem(f"the export's logits differ from torch's by up to {worst:.4g}")
        return {"check": {"max_logit_difference": worst}}
    theirs = model.encode(onnx_files.PROBE_TEXTS, normalize_embeddings=True, show_progress_bar=False)
    ours = session.run(session.encode(onnx_files.PROBE_TEXTS))
    worst = float(np.min(np.sum(theirs * ours, axis=1)))
    if worst < FLOAT_MIN_COSINE:
        raise onnx_files.ExportProblem(f"the export's vectors are only at cosine {worst:.5f} to torch's")
    return {"check": {"min_cosine_to_torch": worst}, "dimensions": int(ours.shape[1])}


def export_float(folder: Path, *, rerank: bool, threads: int) -> dict[str, Any]:
    """Trace the model into onnx/model.onnx; the note that goes into lokal.json."""
    _check_source(folder)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(max(1, threads))
    target = folder / onnx_files.ONNX_DIR
    eager = {"attn_implementation": "eager"}
    traced = _cross_encoder(folder, eager) if rerank else _embedder(folder, eager)
    tokenizer = traced.model.tokenizer
    tokenizer_json = _tokenizer_file(folder, target, tokenizer)
    names, output, activation = traced.names, traced.output, traced.activation
    temp = _temp(target, onnx_files.FLOAT_FILE)
    axes = {name: {0: "batch", 1: "tokens"} for name in names}
    axes[output] = {0: "batch"}
    _say(f"exporting {folder.name} to ONNX ({'cross-encoder' if rerank else 'embeddings'})")
    started = time.monotonic()
    try:
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(traced.graph.eval(), tuple(traced.sample[n] for n in names), str(temp),
                              dynamo=False, input_names=names, output_names=[output], dynamic_axes=axes,
                              opset_version=OPSET, do_constant_folding=True)
        note = {"format": onnx_files.META_FORMAT, "graph": output, "window": traced.window,
                "source": onnx_files.source_stamp(folder),
                "exported_with": {"torch": torch.__version__}}
        if activation is not None:
            note["activation"] = activation
        pipe = onnx_files.Pipeline(tokenizer_json, traced.window, output,
                                   activation=activation or "sigmoid", pad_token=tokenizer.pad_token)
        note.update(_check_against_torch(traced, OnnxSession(temp, pipe, threads=threads), rerank=rerank))
        os.replace(temp, target / onnx_files.FLOAT_FILE)
    finally:
        temp.unlink(missing_ok=True)
    _say(f"exported in {time.monotonic() - started:.1f}s; checked against torch: {note['check']}")
    return note


def _matmuls(path: Path) -> tuple[list[str], dict[int, list[str]], list[str]]:
    """The graph's matrix products with constant weights; those of each transformer layer; and
    the down projections (more inputs than outputs: a feed-forward block's second product, whose
    input carries the widest activations)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    shapes = {init.name: list(init.dims) for init in graph.initializer}
    nodes = [node for node in graph.node if node.op_type == "MatMul" and node.input[1] in shapes]
    layers: dict[int, list[str]] = {}
    for node in nodes:
        found = _LAYER.search(node.name)
        if found:
            layers.setdefault(int(found.group(1)), []).append(node.name)
    down = [node.name for node in nodes if len(shapes[node.input[1]]) == 2
            and shapes[node.input[1]][0] > shapes[node.input[1]][1]]
    return [node.name for node in nodes], layers, down


def _compare(float_path: Path, int8_path: Path, pipe: onnx_files.Pipeline, rerank: bool, threads: int) -> float:
    """How close the int8 graph comes to the float one on the probe sentences: the worst
    cosine of their vectors (a cross-encoder: 1 - the largest difference of its scores)."""
    import numpy as np

    first = OnnxSession(float_path, pipe, threads=threads)
    second = OnnxSession(int8_path, pipe, threads=threads)
    if rerank:
        pairs = list(zip(onnx_files.PROBE_TEXTS, reversed(onnx_files.PROBE_TEXTS)))
        a = onnx_files.activate(first.run(first.encode(pairs)), pipe.activation)
        b = onnx_files.activate(second.run(second.encode(pairs)), pipe.activation)
        return 1.0 - float(np.max(np.abs(a - b)))
    a = first.run(first.encode(onnx_files.PROBE_TEXTS))
    b = second.run(second.encode(onnx_files.PROBE_TEXTS))
    return float(np.min(np.sum(a * b, axis=1)))


def quantize(folder: Path, *, rerank: bool, threads: int) -> dict[str, Any]:
    """onnx/model.onnx -> onnx/model_int8.onnx; what was kept in float and how close it came."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise onnx_files.ExportProblem(f"int8 quantisation needs the onnx package ({exc}): "
                                       "pip install 'lokal[onnx]'") from exc
    target = folder / onnx_files.ONNX_DIR
    source = target / onnx_files.FLOAT_FILE
    pipe = onnx_files.pipeline(folder, rerank)
    nodes, layers, down = _matmuls(source)
    if not nodes:
        raise onnx_files.ExportProblem(f"{source.name} has no matrix products with constant weights to quantise")
    first = layers[min(layers)] if layers else []
    # Cheapest first: signed weights (fastest where the CPU has VNNI), unsigned ones (no int16
    # saturation on AVX2-only CPUs), then the most sensitive products kept in float32.
    tries = [("int8 weights", QuantType.QInt8, []), ("uint8 weights", QuantType.QUInt8, []),
             ("uint8, first layer in float", QuantType.QUInt8, first),
             ("uint8, down projections in float", QuantType.QUInt8, down),
             ("uint8, first layer and down projections in float", QuantType.QUInt8, sorted(set(first + down)))]
    temp = _temp(target, onnx_files.INT8_FILE)
    kept_best = target / f".{onnx_files.INT8_FILE}.best"
    best: tuple[float, str, int] | None = None
    started = time.monotonic()
    try:
        seen: list[tuple[Any, list[str]]] = []
        for label, weight_type, excluded in tries:
            if (weight_type, excluded) in seen:
                continue  # the same graph as a try before (a model without layers to tell apart)
            seen.append((weight_type, excluded))
            quantize_dynamic(str(source), str(temp), weight_type=weight_type, per_channel=True,
                             op_types_to_quantize=["MatMul"], nodes_to_exclude=excluded,
                             extra_options={"MatMulConstBOnly": True})
            score = _compare(source, temp, pipe, rerank, threads)
            _say(f"int8 ({label}): {'score agreement' if rerank else 'worst cosine'} {score:.5f}")
            if best is None or score > best[0]:
                best = (score, label, len(excluded))
                os.replace(temp, kept_best)
            if score >= INT8_MIN_COSINE:
                break
        assert best is not None
        os.replace(kept_best, target / onnx_files.INT8_FILE)
    finally:
        temp.unlink(missing_ok=True)
        kept_best.unlink(missing_ok=True)
    score, label, kept = best
    _say(f"quantised in {time.monotonic() - started:.1f}s")
    return {"score_agreement" if rerank else "min_cosine": score, "scheme": label,
            "quantized_matmuls": len(nodes) - kept, "float_matmuls": kept}


def export(folder: Path, *, rerank: bool = False, int8: bool = False, threads: int = 2,
           force: bool = False) -> dict[str, Any]:
    """Make what is missing of the folder's ONNX export (float, and int8 when asked); a summary."""
    folder = folder.resolve()
    summary: dict[str, Any] = {"folder": str(folder), "made": []}
    with _locked(folder):
        meta = onnx_files.read_meta(folder)
        fresh = not force and onnx_files.is_current(folder, None)
        if not fresh:
            meta = export_float(folder, rerank=rerank, threads=threads)
            _write_meta(folder, meta)
            (folder / onnx_files.ONNX_DIR / onnx_files.INT8_FILE).unlink(missing_ok=True)  # from older weights
            summary["made"].append(onnx_files.FLOAT_FILE)
        if meta is None:  # a float export lokal did not make (a download): note what it is
            pipe = onnx_files.pipeline(folder, rerank)
            meta = {"format": onnx_files.META_FORMAT, "graph": pipe.output, "window": pipe.window,
                    "source": onnx_files.source_stamp(folder), "made_by": "not lokal (found in the folder)"}
            if rerank:
                meta["activation"] = pipe.activation
        if int8 and (force or not onnx_files.is_current(folder, "int8") or "int8" not in meta):
            meta["int8"] = quantize(folder, rerank=rerank, threads=threads)
            _write_meta(folder, meta)
            summary["made"].append(onnx_files.INT8_FILE)
        summary["int8_min_cosine"] = (meta.get("int8") or {}).get("min_cosine")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lokal.engines.onnx_export", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--rerank", action="store_true", help="the folder is a cross-encoder")
    parser.add_argument("--int8", action="store_true", help="also make the int8 export")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--force", action="store_true", help="make the export again even if it is there")
    args = parser.parse_args(argv)
    try:
        summary = export(args.folder, rerank=args.rerank, int8=args.int8, threads=args.threads, force=args.force)
    except onnx_files.ExportProblem as exc:
        _say(f"error: {exc}")
        return 1
    except Exception as exc:  # noqa: BLE001 - the caller reports it
        _say(f"error: {type(exc).__name__}: {exc}")
        return 1
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
