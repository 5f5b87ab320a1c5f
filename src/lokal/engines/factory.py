"""Engine names to engine modules: what builds a loaded model, in this process.

The pool calls it directly (in-process engines) or a worker process calls it
(`lokal.engines.worker`); each engine module is imported only when needed.
"""

from __future__ import annotations

from lokal.engines.base import Engine, LoadOptions, ModelLoadError

#: the engines `create_engine` builds
ENGINES = ("llama-cpp", "sentence-transformers", "whisper", "onnx")


def create_engine(engine: str, options: LoadOptions) -> Engine:
    """The engine module for an engine name, loading options.model_path."""
    if engine == "llama-cpp":
        from lokal.engines.llamacpp import LlamaCppEngine

        return LlamaCppEngine(options)
    if engine == "sentence-transformers":
        from lokal.engines.sentence_transformers import SentenceTransformersEngine

        return SentenceTransformersEngine(options)
    if engine == "whisper":
        from lokal.engines.whisper import WhisperEngine

        return WhisperEngine(options)
    if engine == "piper":
        from lokal.engines.piper import PiperEngine

        return PiperEngine(options)
    if engine == "kokoro":
        from lokal.engines.kokoro import KokoroEngine

        return KokoroEngine(options)
    if engine == "silero-vad":
        from lokal.engines.silero_vad import SileroVadEngine

        return SileroVadEngine(options)
    if engine == "whisper-cpp":
        from lokal.engines.whisper_cpp import WhisperCppEngine

        return WhisperCppEngine(options)
    if engine == "diffusers":
        from lokal.engines.diffusers import DiffusersEngine

        return DiffusersEngine(options)
    if engine == "stablediffusion-ggml":
        from lokal.engines.sdcpp import StableDiffusionCppEngine

        return StableDiffusionCppEngine(options)
    if engine == "onnx":
        from lokal.engines.onnx import OnnxEngine

        return OnnxEngine(options)
    raise ModelLoadError(f"the {engine!r} engine is not available in this version of lokal")


def prepare_engine(engine: str) -> None:
    """Import what loading a model with engine needs, before there is a model to load (a
    spare worker process does this while it waits). A missing library is not an error here:
    the load says so, with the extra to install."""
    try:
        if engine == "llama-cpp":
            from lokal.engines import llamacpp

            llamacpp.prepare()
        elif engine == "sentence-transformers":
            from lokal.engines import sentence_transformers

            sentence_transformers.prepare()
        elif engine == "whisper":
            from lokal.engines import whisper

            whisper.prepare()
        elif engine == "onnx":
            from lokal.engines import onnx

            onnx.prepare()
    except ImportError:
        pass
