"""ONNX exports of sentence-transformers folders: where they live and how to finish their output.

Light on purpose (json, pathlib and, where vectors are pooled, numpy): the ONNX
engine imports it without torch, and so does the exporter.

A folder's exports live in its `onnx/` subfolder, as sentence-transformers and
optimum write them: `model.onnx` (float32) and `model_int8.onnx` (lokal's int8).
lokal's own export also writes `onnx/lokal.json`, the last file it writes, saying
what the graph computes: the whole embedding pipeline (`sentence_embedding`, the
pooled and projected vector) or a cross-encoder's `logits`, the input window and,
for a cross-encoder, the activation on its logits. A `model.onnx` without it (a
hub download) is the transformer alone: lokal pools its token embeddings as the
folder's `1_Pooling/config.json` says.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lokal.formats.modelfile import ONNX_PIPELINE_MODULES

ONNX_DIR = "onnx"
FLOAT_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
META_FILE = "lokal.json"
META_FORMAT = 1
DEFAULT_WINDOW = 512
#: what a graph's output may be called, for each way of finishing it
EMBEDDING_OUTPUT = "sentence_embedding"
TOKEN_OUTPUTS = ("last_hidden_state", "token_embeddings")
SCORE_OUTPUT = "logits"
ACTIVATIONS = ("sigmoid", "identity", "tanh", "softmax")
_POOLING_MODES = ("cls_token", "max_tokens", "mean_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens",
                  "lasttoken")


class ExportProblem(ValueError):
    """A folder whose ONNX export cannot be made or used; the message says why."""


def export_file(folder: Path, quantization: str | None) -> Path:
    return folder / ONNX_DIR / (INT8_FILE if quantization == "int8" else FLOAT_FILE)


def read_meta(folder: Path) -> dict[str, Any] | None:
    """lokal's note on its export in folder, or None (none there, or unreadable)."""
    try:
        meta = json.loads((folder / ONNX_DIR / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == META_FORMAT else None


def source_stamp(folder: Path) -> dict[str, Any]:
    """The weights an export was made from (names, sizes, modification times): an export
    whose stamp differs was made from other weights and is made again."""
    stamp: dict[str, Any] = {}
    for pattern in ("*.safetensors", "pytorch_model*.bin"):
        for path in sorted(folder.glob(pattern)):
            info = path.stat()
            stamp[path.name] = [info.st_size, int(info.st_mtime)]
    return stamp


def is_current(folder: Path, quantization: str | None) -> bool:
    """Whether the export the options ask for is there and (when lokal made it) from these weights."""
    if not export_file(folder, quantization).is_file():
        return False
    meta = read_meta(folder)
    if meta is None:
        # A model.onnx lokal did not make (a download): used as it is. An int8 file needs lokal's note.
        return quantization != "int8"
    if quantization == "int8" and "int8" not in meta:
        return False
    return meta.get("source") == source_stamp(folder)


def _json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _token_value(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


@dataclass
class Pipeline:
    """How to feed a folder's ONNX graph and finish its output."""

    tokenizer: Path
    window: int
    output: str  # sentence_embedding, logits, or a token-embedding output to pool
    pooling: list[str] | None = None  # for token embeddings: sentence-transformers' modes, in order
    activation: str = "sigmoid"  # a cross-encoder's, on its logits
    pad_token: str | None = None


def pipeline(folder: Path, rerank: bool) -> Pipeline:
    """What the folder's export needs around it: lokal's note when it made the export,
    else the folder's own sentence-transformers and tokenizer configs."""
    meta = read_meta(folder) or {}
    tokenizer = folder / ONNX_DIR / "tokenizer.json"
    if not tokenizer.is_file():
        tokenizer = folder / "tokenizer.json"
    if not tokenizer.is_file():
        raise ExportProblem(f"{folder.name} has no tokenizer.json (a fast tokenizer) for ONNX Runtime; "
                            f"`lokal models convert {folder.name} --to onnx` writes one beside the export")
    special = _json(folder / "special_tokens_map.json")
    tokenizer_config = _json(folder / "tokenizer_config.json")
    pad = _token_value(special.get("pad_token")) or _token_value(tokenizer_config.get("pad_token"))
    window = int(meta.get("window") or 0) or _window(folder, tokenizer_config)
    if rerank:
        activation = str(meta.get("activation") or _activation(folder))
        if activation not in ACTIVATIONS:
            raise ExportProblem(f"{folder.name}: its cross-encoder activation {activation!r} is not one "
                                f"lokal applies on ONNX Runtime ({', '.join(ACTIVATIONS)}); "
                                "set embeddings_backend: torch")
        return Pipeline(tokenizer, window, SCORE_OUTPUT, activation=activation, pad_token=pad)
    if meta.get("graph") == EMBEDDING_OUTPUT:
        return Pipeline(tokenizer, window, EMBEDDING_OUTPUT, pad_token=pad)
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        modules = []
    others = sorted({str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules if isinstance(m, dict)}
                    - set(ONNX_PIPELINE_MODULES))
    if others:
        raise ExportProblem(f"{folder.name}: its {ONNX_DIR}/{FLOAT_FILE} is the transformer alone, and the "
                            f"model also has {', '.join(others)} modules, which lokal does not run outside "
                            f"the graph; move {ONNX_DIR}/ away to let lokal export the whole model, or set "
                            "embeddings_backend: torch")
    pooling = _json(folder / "1_Pooling" / "config.json")
    modes = [mode for mode in _POOLING_MODES if pooling.get(f"pooling_mode_{mode}")]
    if not modes:
        modes = ["mean_tokens"]  # sentence-transformers' own default for a bare transformer
    if "weightedmean_tokens" in modes:
        raise ExportProblem(f"{folder.name}: weighted-mean pooling is not done outside the graph; export "
                            f"the whole model with `lokal models convert {folder.name} --to onnx`")
    return Pipeline(tokenizer, window, TOKEN_OUTPUTS[0], pooling=modes, pad_token=pad)


def _window(folder: Path, tokenizer_config: dict[str, Any]) -> int:
    """sentence-transformers' input window: max_seq_length, else the smaller of the
    tokenizer's and the model's limits."""
    st = _json(folder / "sentence_bert_config.json")
    if isinstance(st.get("max_seq_length"), int) and st["max_seq_length"] > 0:
        return int(st["max_seq_length"])
    limits = []
    tokenizer_max = tokenizer_config.get("model_max_length")
    if isinstance(tokenizer_max, int) and 0 < tokenizer_max < 1_000_000:
        limits.append(tokenizer_max)
    positions = _json(folder / "config.json").get("max_position_embeddings")
    if isinstance(positions, int) and positions > 0:
        limits.append(positions)
    return min(limits) if limits else DEFAULT_WINDOW


def _activation(folder: Path) -> str:
    """A cross-encoder's activation as sentence-transformers picks it: the config's, else a
    sigmoid for one label and the logits as they are for more."""
    config = _json(folder / "config.json")
    named = (config.get("sentence_transformers") or {}).get("activation_fn") \
        or config.get("sbert_ce_default_activation_function")
    if isinstance(named, str):
        return activation_name(named)
    labels = config.get("num_labels") or len(config.get("id2label") or {}) or 1
    return "sigmoid" if labels == 1 else "identity"


def activation_name(path: str) -> str:
    """`torch.nn.modules.activation.Sigmoid` -> sigmoid (any other class: its name, lowered)."""
    return path.rsplit(".", 1)[-1].lower()


def pool(hidden: Any, mask: Any, modes: list[str]) -> Any:
    """Token embeddings (batch, tokens, width) to one vector per input, as sentence-transformers'
    Pooling does for each mode (concatenated in its order)."""
    import numpy as np

    weights = mask[..., None].astype(hidden.dtype)
    counts = np.clip(weights.sum(axis=1), 1e-9, None)
    parts = []
    for mode in modes:
        if mode == "cls_token":
            parts.append(hidden[:, 0])
        elif mode == "max_tokens":
            parts.append(np.where(weights > 0, hidden, np.finfo(hidden.dtype).min).max(axis=1))
        elif mode == "mean_tokens":
            parts.append((hidden * weights).sum(axis=1) / counts)
        elif mode == "mean_sqrt_len_tokens":
            parts.append((hidden * weights).sum(axis=1) / np.sqrt(counts))
        elif mode == "lasttoken":
            last = mask.sum(axis=1).astype(int) - 1
            parts.append(hidden[np.arange(hidden.shape[0]), np.clip(last, 0, None)])
        else:  # pragma: no cover - refused in pipeline()
            raise ExportProblem(f"pooling mode {mode} is not supported")
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


def activate(logits: Any, activation: str) -> Any:
    import numpy as np

    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    if activation == "tanh":
        return np.tanh(logits)
    if activation == "softmax":
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)
    return logits


def normalize(vectors: Any) -> Any:
    import numpy as np

    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.clip(norms, 1e-12, None)


#: Sentences an export and its int8 copy are compared on: short and long, prose, code, other scripts.
PROBE_TEXTS = [
    "a", "hello world", "What is the capital of France?", "Paris is the capital of France.",
    "The quick brown fox jumps over the lazy dog.", "I love machine learning.",
    "Bananas are yellow and rich in potassium.", "The weather today is sunny with light winds.",
    "def add(a, b):\n    return a + b", "SELECT name FROM users WHERE id = 42;",
    "Ünïcödé tëxt with àccents", "東京は日本の首都です。", "Книга лежит на столе.",
    "How do I reset my password?", "Click 'Forgot password' on the sign-in page and follow the email.",
    "The mitochondria is the powerhouse of the cell.",
    "In 1969 the first humans walked on the Moon during the Apollo 11 mission.",
    "Refunds are processed within five business days after the returned item arrives.",
    " ".join(["A long paragraph about the history of lighthouses and the keepers who tended them."] * 6),
    "Error: connection refused (ECONNREFUSED) while contacting 127.0.0.1:8080",
    "¿Dónde está la biblioteca?", "Meeting moved to Thursday at 3pm, room B.",
    "Photosynthesis converts light energy into chemical energy.", "42",
]
