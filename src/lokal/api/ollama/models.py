"""lokal's models as Ollama describes them: names with tags, details, model_info, capabilities.

Names: Ollama's are `name:tag` with `:latest` implied. A lokal model `gpt-3.5-turbo`
is listed as `gpt-3.5-turbo:latest` and answers to both spellings; a lokal name
that has a tag of its own (`llama3:8b`) is listed as it is.

Digest: lokal has no content-addressed blobs, so the digest is the sha256 of
`<resolved model path>\\0<size>\\0<mtime_ns>` of the model file (or of every file
in a model folder). It is stable while the file is unchanged, changes when the
file is replaced, and is the same for two names (aliases) of one file, as
Ollama's digests are for copies.
"""

from __future__ import annotations

import hashlib
import json
import struct
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lokal.errors import NotFound
from lokal.formats.modelfile import ModelFile
from lokal.models.catalog import Entry, ModelEntry
from lokal.models.registry import ModelRegistry

LATEST = ":latest"

# llama.cpp's llama_ftype, as general.file_type stores it (Ollama's fs/ggml FileType).
FILE_TYPES = [
    "F32", "F16", "Q4_0", "Q4_1", "Q4_1_F16", "Q4_2", "Q4_3", "Q8_0", "Q5_0", "Q5_1", "Q2_K",
    "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "IQ2_XXS",
    "IQ2_XS", "Q2_K_S", "IQ3_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ3_M", "IQ2_S",
    "IQ2_M", "IQ4_XS", "IQ1_M", "BF16", "Q4_0_4_4", "Q4_0_4_8", "Q4_0_8_8", "TQ1_0", "TQ2_0",
    "MXFP4", "NVFP4", "Q1_0",
]


class ModelNotFound(NotFound):
    def __init__(self, name: str) -> None:
        super().__init__(f"model '{name}' not found", param="model")
        self.name = name


def wire_name(name: str) -> str:
    """A lokal model name as Ollama shows it (the tag made explicit)."""
    return name if ":" in name.rsplit("/", 1)[-1] else name + LATEST


def resolve(registry: ModelRegistry, name: str) -> Entry:
    """The entry an Ollama model name means: the exact name, else without `:latest`
    (403 for a model the request's API key may not use, whether or not it exists)."""
    registry.permit(name)
    names = {e.name: e for e in registry.entries}
    if name in names:
        return names[name]
    if name.endswith(LATEST) and name[: -len(LATEST)] in names:
        return names[name[: -len(LATEST)]]
    raise ModelNotFound(name)


def file_of(entry: Entry) -> ModelFile | None:
    """What an entry's file is, once the catalog has read it (pending and broken: unknown)."""
    return entry.file if isinstance(entry, ModelEntry) else None


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path] if path.exists() else []


def size_and_mtime(entry: Entry) -> tuple[int, float]:
    files = _files(entry.model_path) if entry.model_path is not None else []
    stats = [p.stat() for p in files]
    sources = [entry.source] if entry.source is not None and entry.source.exists() else []
    mtimes = [s.st_mtime for s in stats] + [p.stat().st_mtime for p in sources]
    return sum(s.st_size for s in stats), max(mtimes, default=0.0)


def digest(entry: Entry) -> str:
    """See the module's docstring."""
    h = hashlib.sha256()
    if entry.model_path is not None:
        for path in _files(entry.model_path):
            stat = path.stat()
            h.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    else:
        h.update(entry.name.encode())
    return h.hexdigest()


def rfc3339(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).astimezone().isoformat()


def human_number(count: int) -> str:
    """A parameter count as Ollama writes it (8.0B, 135M, 22.57M)."""
    for unit, scale, digits in (("B", 1e9, 1), ("M", 1e6, 2)):
        if count >= scale:
            number = count / scale
            return f"{number:.0f}{unit}" if number == int(number) else f"{number:.{digits}f}{unit}"
    if count >= 1000:
        return f"{count / 1000:.0f}K"
    return str(count)


def _safetensors_parameters(folder: Path) -> int | None:
    """Parameters of a Hugging Face folder, from its safetensors headers (no weights read)."""
    total = 0
    found = False
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with path.open("rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                if length > 100_000_000:
                    return None
                header = json.loads(f.read(length))
        except (OSError, ValueError, struct.error):
            return None
        for key, tensor in header.items():
            if key == "__metadata__" or not isinstance(tensor, dict):
                continue
            count = 1
            for dim in tensor.get("shape") or []:
                count *= int(dim)
            total += count
            found = True
    return total if found else None


def _family(entry: Entry) -> str:
    model_file = file_of(entry)
    if model_file is None:
        return ""
    if model_file.gguf is not None:
        return model_file.gguf.architecture
    config = model_file.hf_config or {}
    return str(config.get("model_type") or "")


def details(entry: Entry) -> dict[str, Any]:
    model_file = file_of(entry)
    family = _family(entry)
    fmt, parameter_size, quantization = "", "", ""
    if model_file is not None and model_file.gguf is not None:
        fmt = "gguf"
        metadata = model_file.gguf.metadata
        count = metadata.get("general.parameter_count")
        if isinstance(count, int) and count > 0:
            parameter_size = human_number(count)
        elif isinstance(metadata.get("general.size_label"), str):
            parameter_size = metadata["general.size_label"]
        file_type = metadata.get("general.file_type")
        if isinstance(file_type, int) and 0 <= file_type < len(FILE_TYPES):
            quantization = FILE_TYPES[file_type]
    elif model_file is not None and model_file.kind == "hf":
        fmt = "safetensors"
        count = _safetensors_parameters(entry.model_path) if entry.model_path is not None else None
        if count:
            parameter_size = human_number(count)
        dtype = (model_file.hf_config or {}).get("torch_dtype")
        quantization = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}.get(str(dtype), "")
    elif model_file is not None:
        fmt = model_file.kind
    return {"parent_model": "", "format": fmt, "family": family,
            "families": [family] if family else None,
            "parameter_size": parameter_size, "quantization_level": quantization}


def capabilities(entry: Entry) -> list[str]:
    """What the model really does, in Ollama's words. Every chat model has `tools` (its
    own format when its template takes tools, else lokal's JSON envelope); `vision` when
    the model takes images (a multimodal projector). `insert` is not listed: whether a
    GGUF has fill-in-the-middle tokens only its engine knows (llama.cpp finds them by
    their text in the vocabulary); `suffix` is served when it has them, else a 400."""
    out = []
    if "chat" in entry.tasks or "complete" in entry.tasks:
        out.append("completion")
    if "chat" in entry.tasks:
        out.append("tools")
    if isinstance(entry, ModelEntry) and entry.vision and "chat" in entry.tasks:
        out.append("vision")
    if "embed" in entry.tasks:
        out.append("embedding")
    return out


def model_info(entry: Entry, verbose: bool = False) -> dict[str, Any]:
    """The GGUF header's metadata (the chat template goes to `template`); for a Hugging
    Face folder, the few keys clients read (architecture, context and embedding length)."""
    model_file = file_of(entry)
    if model_file is None:
        return {}
    if model_file.gguf is not None:
        info: dict[str, Any] = {}
        for key, value in model_file.gguf.metadata.items():
            if key == "tokenizer.chat_template":
                continue
            # Long arrays (tokens, merges) are not kept by lokal's header reader.
            info[key] = [] if value is None else value
        return info
    config = model_file.hf_config or {}
    family = _family(entry)
    info = {"general.architecture": family}
    if family:
        if isinstance(config.get("max_position_embeddings"), int):
            info[f"{family}.context_length"] = config["max_position_embeddings"]
        if isinstance(config.get("hidden_size"), int):
            info[f"{family}.embedding_length"] = config["hidden_size"]
    if verbose:
        info.update({f"config.{k}": v for k, v in config.items() if isinstance(v, (int, float, str, bool))})
    return info


def listing(entry: Entry) -> dict[str, Any]:
    """One model of /api/tags."""
    size, mtime = size_and_mtime(entry)
    name = wire_name(entry.name)
    return {"name": name, "model": name, "modified_at": rfc3339(mtime), "size": size,
            "digest": digest(entry), "details": details(entry), "capabilities": capabilities(entry)}


def template(entry: Entry) -> str:
    model_file = file_of(entry)
    if model_file is not None and model_file.gguf is not None:
        value = model_file.gguf.metadata.get("tokenizer.chat_template")
        if isinstance(value, str):
            return value
    return ""


def parameters(entry: Entry, context: int | None = None) -> str:
    """The config's sampling defaults and stop words, as Ollama's `parameters` text, and
    `num_ctx`: the context a load uses (context, when known), else the config's."""
    config = entry.config
    if config is None:
        return ""
    lines = []
    for key, value in config.parameters.request_defaults().items():
        name = {"max_tokens": "num_predict"}.get(key, key)
        lines.append(f"{name:<30} {json.dumps(value) if isinstance(value, str) else value}")
    for stop in config.stopwords:
        lines.append(f"{'stop':<30} {json.dumps(stop)}")
    if context or config.context_size:
        lines.append(f"{'num_ctx':<30} {context or config.context_size}")
    return "\n".join(lines)


def show(entry: Entry, verbose: bool = False, context: int | None = None) -> dict[str, Any]:
    """/api/show's answer (context: the context a load uses, see `parameters`)."""
    _, mtime = size_and_mtime(entry)
    source = entry.model_path.name if entry.model_path is not None else entry.name
    out: dict[str, Any] = {
        "modelfile": f"# Served by lokal from {source}\nFROM {source}\n",
        "parameters": parameters(entry, context),
        "template": template(entry),
        "details": details(entry),
        "model_info": model_info(entry, verbose),
        "capabilities": capabilities(entry),
        "modified_at": rfc3339(mtime),
    }
    if entry.config is not None and entry.config.system_prompt:
        out["system"] = entry.config.system_prompt
    if entry.config is not None and entry.config.messages:
        out["messages"] = [m.model_dump() for m in entry.config.messages]
    model_file = file_of(entry)
    license_ = model_file.gguf.metadata.get("general.license") if model_file and model_file.gguf else None
    if isinstance(license_, str):
        out["license"] = license_
    return out
