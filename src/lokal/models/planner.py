"""The load planner: entry + task + server defaults -> which engine instance, with which options.

Pure: it reads only the entry (its config and the file description the catalog
made at scan) and the defaults, so it is tested without a model. A model that
serves several tasks gets one engine instance per kind of work, so their
caches never mix: `generate` (chat and completion), `embed`, `rerank` (a native
cross-encoder), `transcribe`. A cosine rerank runs on the `embed` instance.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from lokal.engines.base import DiffusionOptions, LoadOptions
from lokal.errors import ModelCapabilityError, ModelUnavailableError
from lokal.models import localai_config
from lokal.formats.diffusion import EDIT_KINDS
from lokal.models.catalog import ModelEntry
from lokal.models.image_config import SCHEDULERS

log = logging.getLogger(__name__)

DEFAULT_CONTEXT = 4096
#: llama.cpp's multimodal path needs at least this much context per slot.
VISION_MIN_CONTEXT = 2048

_FILE_ENGINES = {"gguf": "llama-cpp", "hf": "sentence-transformers", "whisper-ct2": "whisper",
                 "piper": "piper", "kokoro": "kokoro", "silero-vad": "silero-vad", "whisper-ggml": "whisper-cpp",
                 "diffusers": "diffusers", "sd-cpp": "stablediffusion-ggml"}
_WRONG_ENGINE = {
    "gguf": "a GGUF file (use backend llama-cpp)",
    "hf": "a Hugging Face model folder (use backend sentence-transformers, or convert it with "
          "`lokal models convert`)",
    "whisper-ct2": "a Whisper model (use backend whisper)",
    "piper": "a Piper voice (use backend piper)",
    "kokoro": "a Kokoro model (use backend kokoro)",
    "silero-vad": "a Silero VAD model (use backend silero-vad)",
    "whisper-ggml": "a whisper.cpp model (use backend whisper)",
    "diffusers": "an image model (use backend diffusers)",
    "sd-cpp": "an image model for stable-diffusion.cpp (use backend stablediffusion-ggml)",
}


@dataclass
class EngineDefaults:
    """Server-wide values a model config may override."""

    threads: int
    parallel: int
    context_size: int | None = None
    batch_embeddings: bool = True
    queue_size: int = 128
    prompt_cache_mb: int = 0
    #: tokens a generation may take when neither request nor config limits it (None: no cap)
    max_tokens: int | None = None
    #: the largest width or height an image request may ask for (IMAGE_MAX_SIDE)
    image_max_side: int = 1024


@dataclass(frozen=True)
class LoadPlan:
    engine: str
    instance: str  # generate, embed, rerank, transcribe, speak, vad
    options: LoadOptions
    task: str = "chat"  # the task it was planned for
    #: why the context loaded differs from the one the config or CONTEXT_SIZE asks for
    context_note: str | None = None


def instance_for(entry: ModelEntry, task: str) -> str:
    """Which engine instance of the model serves task (after `check_task`)."""
    if task in ("chat", "complete"):
        return "generate"
    if task in ("image", "image_edit"):
        return "image"
    if task == "rerank":
        return "rerank" if entry.rerank_by == "cross-encoder" else "embed"
    return task


def check_task(entry: ModelEntry, task: str) -> None:
    """Refuse a task the model cannot do, saying what it can."""
    if task in entry.tasks:
        return
    if task in ("embed", "rerank") and "chat" in entry.tasks:
        hint = (" It is a text-generation model: set `embeddings: true` in its config to serve "
                "embeddings and rerank too.")
    elif task == "image_edit" and "image" in entry.tasks:
        hint = (" Its pipeline makes images from text only; image edits (image-to-image, "
                f"inpainting) need one of: {EDIT_KINDS}.")
    elif task in ("chat", "complete", "speak", "vad", "transcribe", "image", "image_edit"):
        hint = " It serves: " + ", ".join(sorted(entry.tasks)) + "."
    else:
        hint = ""
    raise ModelCapabilityError(entry.name, task, hint)


def plan_load(entry: ModelEntry, task: str, defaults: EngineDefaults) -> LoadPlan:
    """The engine instance and its load options for task on entry."""
    config, model_file = entry.config, entry.file
    engine = _engine_for(entry)
    runtime = quantization = None
    if engine == "sentence-transformers":
        engine, runtime, quantization = _embedding_runtime(entry)
    check_task(entry, task)
    instance = instance_for(entry, task)
    if instance == "image":
        return LoadPlan(engine, instance, _image_options(entry, defaults), task)
    speculative = config.speculation if instance == "generate" else None
    if speculative is not None and entry.draft_file is not None and speculative["type"] == "draft":
        check_draft(entry)
    engine_params = localai_config.engine_params(config.option_values) if engine == "llama-cpp" else {}
    why = localai_config.speculation_problem(speculative, model_file.gguf, entry.draft_path)
    if why is not None:
        raise ModelUnavailableError(entry.name, why)
    vision = entry.vision and instance == "generate"
    context, note = _context(entry, defaults, vision=vision)
    if vision and speculative is not None:
        # As LocalAI documents it: llama.cpp does not speculate while a projector is loaded.
        log.warning("model %s: speculative decoding (%s) is off while it takes images (mmproj); remove "
                    "mmproj from its config to speculate", entry.name, speculative["type"])
        speculative = None
    options = LoadOptions(
        model_path=entry.model_path,
        context_size=context,
        threads=config.threads or defaults.threads,
        parallel=engine_params.pop("parallel", defaults.parallel),
        f16=config.f16,
        mmap=config.mmap,
        gpu_layers=config.gpu_layers,
        embeddings=instance in ("embed", "rerank"),
        rerank=instance == "rerank",
        prompt_cache_mb=defaults.prompt_cache_mb,
        gguf=model_file.gguf,
        speculative=speculative,
        draft_path=entry.draft_path if speculative is not None else None,
        mmproj_path=entry.mmproj_path if vision else None,
        voices_path=entry.voices_path,
        engine_params=engine_params,
        cache_type_k=config.cache_type_k,
        cache_type_v=config.cache_type_v,
        flash_attention=config.flash_attention,
        batch=config.parameters.batch if instance == "generate" else None,
        runtime=runtime,
        quantization=quantization,
    )
    return LoadPlan(engine, instance, options, task, note)


def _engine_for(entry: ModelEntry) -> str:
    """The engine that runs the entry's file; refused when its config names one that cannot."""
    config, model_file = entry.config, entry.file
    file_engine = _FILE_ENGINES[model_file.kind]
    engine = config.engine or file_engine
    if file_engine == "whisper-cpp" and (config.backend or "").strip().lower() == "whisper":
        engine = file_engine  # LocalAI's `whisper` backend is whisper.cpp; its GGML files run there
    if engine != file_engine:
        raise ModelUnavailableError(entry.name, f"backend {config.backend!r} cannot serve "
                                                f"{entry.model_path.name}: it is {_WRONG_ENGINE[model_file.kind]}")
    return engine


def _context(entry: ModelEntry, defaults: EngineDefaults, *, vision: bool) -> tuple[int, str | None]:
    """The context to load with, and why it differs from the one the config or CONTEXT_SIZE asks
    for (None when it does not, or when it was raised for images, which is logged instead)."""
    config, model_file = entry.config, entry.file
    trained = model_file.gguf.context_length if model_file.gguf else None
    context = config.context_size or defaults.context_size
    if context is None:
        context = min(trained or DEFAULT_CONTEXT, DEFAULT_CONTEXT)
    note = None
    if trained and context > trained:
        # llama.cpp caps every slot at the trained context whatever n_ctx says (and would still
        # allocate KV cache for the rest): load what will be used, and say why once per load.
        asked = "its context_size" if config.context_size else "CONTEXT_SIZE"
        note = (f"{asked} {context} is more than the {trained} tokens the model was trained on; "
                f"the engine caps each request there, so it is loaded with {trained}")
        context = trained
    if vision and context < VISION_MIN_CONTEXT:
        if config.context_size is not None and config.context_size < VISION_MIN_CONTEXT:
            raise ModelUnavailableError(  # the model's own config asked for less: say so
                entry.name, f"it takes images (mmproj), which needs a context of at least "
                            f"{VISION_MIN_CONTEXT} tokens, but its context_size is {config.context_size}; raise it "
                            "(or remove mmproj to serve it as a text model)")
        log.warning("model %s: context raised from %d to %d tokens, the least a model taking "
                    "images (mmproj) runs with", entry.name, context, VISION_MIN_CONTEXT)
        context = VISION_MIN_CONTEXT
        note = None
    return context, note


def _embedding_runtime(entry: ModelEntry) -> tuple[str, str | None, str | None]:
    """(engine, runtime, quantization) for a sentence-transformers folder: ONNX Runtime (or
    OpenVINO) when the config asks or the folder carries an ONNX export, else torch."""
    config, model_file = entry.config, entry.file
    assert config is not None and model_file is not None
    runtime = config.embeddings_backend
    if runtime is None:
        runtime = "onnx" if model_file.onnx or config.quantization == "int8" else "torch"
    quantization = config.quantization
    if quantization in ("fp32", "float32", "none"):
        quantization = None
    if quantization not in (None, "int8"):
        raise ModelUnavailableError(entry.name, f"quantization {config.quantization!r} is not one lokal "
                                                "applies to an embedding model (int8, for ONNX Runtime)")
    if runtime == "torch":
        if quantization is not None:
            raise ModelUnavailableError(entry.name, "quantization: int8 needs embeddings_backend: onnx "
                                                    "(or openvino); torch runs the model as stored")
        return "sentence-transformers", None, None
    return "onnx", runtime, quantization


def _image_options(entry: ModelEntry, defaults: EngineDefaults) -> LoadOptions:
    config, info = entry.config, entry.file.diffusion
    assert info is not None  # an image model (its tasks say so)
    options = config.diffusers
    extra = (config.model_extra or {}).get("options")
    return LoadOptions(
        model_path=entry.model_path, context_size=0, threads=config.threads or defaults.threads,
        parallel=1, f16=config.f16, mmap=config.mmap,
        diffusion=DiffusionOptions(
            info=info,
            pipeline=options.pipeline_type if options is not None else None,
            scheduler=SCHEDULERS[options.scheduler_type] if options is not None and options.scheduler_type
            else None,
            enabled=options.enabled if options is not None else None,
            clip_skip=options.clip_skip if options is not None else None,
            steps=config.step, guidance=config.cfg_scale, config_folder=info.config_folder,
            max_side=defaults.image_max_side,
            options=[str(o) for o in extra] if isinstance(extra, list) else []))



def check_draft(entry: ModelEntry) -> None:
    """A draft model must share the model's vocabulary: its tokens are the model's tokens."""
    main = entry.file.gguf
    draft = entry.draft_file.gguf if entry.draft_file is not None else None
    if main is None or draft is None:
        raise ModelUnavailableError(entry.name, "draft_model must be a GGUF, like the model it drafts for")
    if main.vocabulary != draft.vocabulary:
        names = ("tokenizer", "pre-tokenizer", "tokens", "BOS id", "EOS id")
        differ = "; ".join(f"{n}: {a!r} vs {b!r}" for n, a, b in zip(names, main.vocabulary, draft.vocabulary)
                           if a != b)
        raise ModelUnavailableError(entry.name, (
            f"draft_model {entry.draft_path.name if entry.draft_path else '?'} does not share the "
            f"vocabulary of {entry.model_path.name if entry.model_path else 'the model'} ({differ}); "
            "a draft model must come from the same family (same tokenizer)"))


def main_task(entry: ModelEntry) -> str:
    """What a model is mainly for (what a preload loads)."""
    for task in ("chat", "embed", "rerank", "transcribe", "speak", "vad", "image"):
        if task in entry.tasks:
            return task
    return "chat"
