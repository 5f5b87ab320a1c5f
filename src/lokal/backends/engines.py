"""Engine names to engine modules: what builds a loaded model, in this process.

The pool calls it directly (in-process engines) or a worker process calls it
(`lokal.backends.worker`); each engine module is imported only when needed.
"""

from __future__ import annotations

from lokal.backends.base import Backend, LoadOptions, ModelLoadError


def create_backend(engine: str, options: LoadOptions) -> Backend:
    """The engine module for an engine name, loading options.model_path."""
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
