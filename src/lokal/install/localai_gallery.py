"""LocalAI gallery entries as lokal plans them: what it refuses up front (with the real
reason, before any download), what it installs from a Hugging Face repo, and which of
an entry's `variants` it installs.

* **Engines lokal has not got yet** (`PENDING`): stable-diffusion.cpp ...
  are refused at planning with the reason; each row is flipped on (removed) when its
  engine lands. Backends lokal never serves (vLLM, MLX, ...) are refused as such.
* **Tasks**: an entry whose `known_usecases` name only things lokal has no engine for
  (a TTS or VAD model, a `score` classifier) is refused, even on a backend lokal has
  (a whisper.cpp VAD model, a transformers TTS model).
* **Hugging Face repos**: sentence-transformers, rerankers and transformers embedders
  name a repo id (`sentence-transformers/all-MiniLM-L6-v2`, or a bare name that
  sentence-transformers resolves under `sentence-transformers/`), not a file: the
  repo's model files are installed into a folder of the models folder and the config
  points there. Alternate weight formats (ONNX, OpenVINO, TensorFlow, Flax, a second
  PyTorch copy beside safetensors) are left out.
* **Variants**: an entry's `variants` name other entries (other builds of the same
  model). The entry itself is the default; a user may name one of its variants (or the
  entry itself) to install that one instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from lokal.errors import BadRequest
from lokal.models.config import BACKEND_ALIASES
from lokal.models.localai_config import usecase_tasks

#: backend -> what it is; refused at planning until lokal has an engine for it. Remove a
#: row when the engine lands (the speech and images issues).
PENDING: dict[str, str] = {
    "kokoros": "a Kokoro text-to-speech model for LocalAI's Rust runner: lokal runs Kokoro with backend kokoro",
    "stablediffusion-ggml": "a stable-diffusion.cpp image model: stable-diffusion-cpp-python does not build "
                            "here yet, so lokal cannot run it (use a diffusers model: backend diffusers)",
    "stablediffusion": "a Stable Diffusion image model: lokal has no image-generation engine yet",
}

#: what each engine serves (an entry whose usecases need another engine is refused)
_ENGINE_TASKS = {
    "llama-cpp": frozenset({"chat", "complete", "embed", "rerank"}),
    "sentence-transformers": frozenset({"embed", "rerank"}),
    "whisper": frozenset({"transcribe"}),
    "piper": frozenset({"speak"}), "kokoro": frozenset({"speak"}), "silero-vad": frozenset({"vad"}),
    "diffusers": frozenset({"image", "image_edit"}),
}

#: usecases by what they are (for messages)
_UNSERVED_USECASES = {
    "tts": "text-to-speech", "vad": "voice-activity detection", "image": "image generation",
    "video": "video generation", "sound_generation": "sound generation", "score": "scoring (classifier)",
    "detection": "object detection", "diarization": "speaker diarization", "3d": "3D generation",
    "audio_transform": "audio transforms", "speaker_recognition": "speaker recognition",
    "face_recognition": "face recognition", "depth": "depth estimation", "realtime_audio": "realtime audio",
    "token_classify": "token classification", "sound_classification": "sound classification",
}

#: HF-repo backends and the transformers model types that are embedders (sentence-transformers
#: serves them); other transformers types are generative or speech models lokal does not run so
_HF_BACKENDS = frozenset({"sentencetransformers", "sentence-transformers", "transformers", "rerankers"})
_EMBEDDER_TYPES = frozenset({"", "ovmodelforfeatureextraction", "automodel", "sentencetransformer"})
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_BARE_ID = re.compile(r"^[A-Za-z0-9][\w.-]*$")
_SKIP_FILE = re.compile(r"(^|/)(onnx|openvino|coreml|tf|flax)/|\.(onnx|h5|msgpack|ot|ckpt|pt|gguf|bin\.index\.json)$"
                        r"|^(\.gitattributes|README\.md|LICENSE.*)$|(^|/)(tf_model|flax_model|rust_model)\.")


class NotServable(BadRequest):
    """A gallery entry of a kind lokal does not serve (yet): refused at planning."""

    def __init__(self, message: str) -> None:
        super().__init__(message, param="id")


def refusal(config: dict[str, Any], what: str) -> str | None:
    """Why lokal refuses to install a config, or None."""
    backend = str(config.get("backend") or "").strip().lower()
    if backend in PENDING:
        return f"{what} is {PENDING[backend]} (backend {backend!r})"
    if backend and backend not in BACKEND_ALIASES:
        return (f"{what} needs LocalAI's {backend!r} backend, which is not served by lokal (lokal serves "
                f"{', '.join(sorted(set(BACKEND_ALIASES)))})")
    usecases = config.get("known_usecases")
    if isinstance(usecases, str):
        usecases = [usecases]
    if isinstance(usecases, list) and usecases:
        allowed, unserved = usecase_tasks([str(u) for u in usecases])
        if not allowed:
            kinds = ", ".join(_UNSERVED_USECASES.get(u, u) for u in unserved) or "nothing lokal serves"
            return f"{what} is a model for {kinds} (known_usecases), which lokal has no engine for"
        engine = BACKEND_ALIASES.get(backend) if backend else None
        can = _ENGINE_TASKS.get(engine or "")
        if can is not None and not allowed & can:
            named = [str(u).strip().lower().removeprefix("flag_") for u in usecases]
            kinds = ", ".join(_UNSERVED_USECASES.get(u, u) for u in named)
            return (f"{what} is a model for {kinds} (known_usecases) on LocalAI's {backend!r} backend, whose "
                    f"engine in lokal serves {', '.join(sorted(can))} only")
        if config.get("mmproj") and not allowed & {"chat", "complete"}:
            return (f"{what} embeds or ranks images with text (an mmproj on a {'/'.join(sorted(allowed))} "
                    "model); lokal's embeddings and rerank take text only, its projectors serve chat")
    model_type = str(config.get("type") or "").strip().lower()
    if backend == "transformers" and model_type not in _EMBEDDER_TYPES:
        return (f"{what} is a {config.get('type')} model for LocalAI's transformers backend; lokal runs "
                "text generation from GGUF files (llama-cpp) and serves transformers models only as "
                "embedders (sentence-transformers)")
    if backend == "rerankers" and model_type not in ("", "cross-encoder", "crossencoder"):
        return (f"{what} is a {config.get('type')} reranker; lokal reranks with cross-encoders and "
                "embedding models only")
    return None


def hf_repo(config: dict[str, Any], files: list[Any]) -> str | None:
    """The Hugging Face repo an entry's model names, when it names one instead of a file."""
    backend = str(config.get("backend") or "").strip().lower()
    if backend not in _HF_BACKENDS:
        return None
    model = (config.get("parameters") or {}).get("model")
    if not isinstance(model, str) or "://" in model:
        return None
    names = {str(f.get("filename")) for f in files if isinstance(f, dict)}
    if model in names or any(n.startswith(model.rstrip("/") + "/") for n in names):
        return None
    if _REPO_ID.match(model):
        return model
    if _BARE_ID.match(model) and backend in ("sentencetransformers", "sentence-transformers"):
        return f"sentence-transformers/{model}"  # how sentence-transformers resolves a bare name
    return None


def diffusers_repo_of(config: dict[str, Any], files: list[Any]) -> str | None:
    """The Hugging Face repo a diffusers entry's model names (LocalAI's diffusers backend
    loads a repo id from the hub), when it names one instead of a file or folder."""
    if str(config.get("backend") or "").strip().lower() != "diffusers":
        return None
    model = (config.get("parameters") or {}).get("model")
    if not isinstance(model, str) or "://" in model or model.lower().endswith((".safetensors", ".ckpt")):
        return None
    names = {str(f.get("filename")) for f in files if isinstance(f, dict)}
    if model in names or any(n.startswith(model.rstrip("/") + "/") for n in names):
        return None
    return model if _REPO_ID.match(model) else None


def repo_files(repo: str, listing: dict[str, dict[str, Any]], folder: str,
               meta: Callable[[dict[str, Any]], dict[str, Any]]) -> list[dict[str, Any]]:
    """The files to fetch from a model repo into folder/: config, tokenizer, weights (one
    format: safetensors when there are any), sentence-transformers' module folders."""
    paths = [p for p in listing if not _SKIP_FILE.search(p)]
    if any(p.endswith(".safetensors") for p in paths):
        paths = [p for p in paths if not re.search(r"(^|/)pytorch_model.*\.bin$", p)]
    if not any(p.rsplit("/", 1)[-1] == "config.json" for p in paths):
        raise BadRequest(f"Hugging Face repo {repo} has no config.json: it is not a transformers model",
                         param="id")
    return [{"filename": f"{folder}/{p}", "uri": f"huggingface://{repo}/{p}", **meta(listing[p])}
            for p in sorted(paths)]


def choose_variant(raw: dict[str, Any], variant: str | None, what: str) -> str | None:
    """The entry to install instead of raw (a variant's name), None for raw itself;
    BadRequest when the user names a build the entry does not offer."""
    if variant is None:
        return None
    offered = [str(v.get("model")) for v in raw.get("variants") or [] if isinstance(v, dict) and v.get("model")]
    if variant == raw.get("name"):
        return None
    if variant not in offered:
        choices = ", ".join([str(raw.get("name"))] + offered)
        raise BadRequest(f"{what} has no variant {variant!r}; it offers: {choices}", param="variant")
    return variant
