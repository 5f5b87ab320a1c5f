"""Engine names to engine modules: what builds a loaded model, in this process.

The pool calls it directly (in-process engines) or a worker process calls it
(`lokal.engines.worker`); each engine module is imported only when needed.
"""

from __future__ import annotations

from lokal.engines.base import Engine, LoadOptions, ModelLoadError


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
    raise ModelLoadError(f"the {engine!r} engine is not available in this version of lokal")
