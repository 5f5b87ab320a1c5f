"""The one small interface every engine implements.

Bodies in and chunks out are plain dicts in the OpenAI streaming shape, so the
layers above never import an engine. Engines stream always: a chunk sink returns
True to stop generation (a client went away), and non-streaming answers are
assembled from the chunks above this layer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lokal.errors import EngineError
from lokal.formats.modelfile import GGUFInfo

__all__ = ["EngineError"]

ChunkSink = Callable[[dict[str, Any]], bool]


class ModelLoadError(Exception):
    """A model that could not be loaded; the message says why, for the user."""


class EngineDied(ModelLoadError):
    """The engine's worker process ended while loading (an abort, a signal): a crash."""


@dataclass
class LoadOptions:
    """Everything an engine needs to load one model."""

    model_path: Path
    context_size: int
    threads: int
    parallel: int
    f16: bool | None = None
    mmap: bool | None = None
    gpu_layers: int | None = None
    embeddings: bool = False
    rerank: bool = False  # a cross-encoder scoring (query, document) pairs
    prompt_cache_mb: int = 0  # host memory for saved prompt states (0: none beyond the slots)
    gguf: GGUFInfo | None = None  # the header the catalog read, so engines need not read it again
    #: speculative decoding: {"type": mode, ...parameters} (None: off) and the draft model's file
    speculative: dict[str, Any] | None = None
    draft_path: Path | None = None
    mmproj_path: Path | None = None  # a multimodal projector: the model takes images
    #: KV cache element types (llama.cpp's names: f16, q8_0, q4_0 ...; None: f16, or f32 when f16 is off)
    cache_type_k: str | None = None
    cache_type_v: str | None = None
    #: flash attention: "on", "off" or "auto" (None: the engine's default, auto)
    flash_attention: str | None = None
    #: prompt tokens per engine step, and per micro-batch (None: the engine module's defaults)
    batch: int | None = None
    ubatch: int | None = None
    #: sentence-transformers models: where they run ("torch", "onnx", "openvino") and how
    #: an ONNX export is quantised ("int8"; None: float32)
    runtime: str | None = None
    quantization: str | None = None


@dataclass
class Embeddings:
    """Unit-length vectors in input order, and the tokens they took."""

    vectors: list[list[float]]
    prompt_tokens: int


@dataclass
class Scores:
    """Relevance of each document to a query, in document order, and the tokens it took."""

    scores: list[float]
    prompt_tokens: int
    #: the head's output before the activation (a cross-encoder's logits), when the engine has it
    raw: list[float] | None = None


@dataclass
class Transcription:
    """What a speech model heard."""

    text: str
    language: str | None = None
    duration: float | None = None
    segments: list[dict[str, Any]] = field(default_factory=list)  # id, start, end, text


class Engine(ABC):
    """A loaded model. Methods block the calling thread and may run concurrently.

    An engine implements what the instance was loaded for (the planner decides, from
    what the catalog read of the model); the rest refuse.
    """

    #: sequences the model can generate at once (None: no such limit)
    slots: int | None = None

    def chat(self, body: dict[str, Any], sink: ChunkSink, *, streamed: bool = True) -> None:
        """Stream a chat completion for an OpenAI-style body into sink.

        `streamed` says whether the client reads the answer as it is made; when not, an
        engine may deliver the same chunks later and in fewer pieces (a remote one does)."""
        raise EngineError(400, "this model cannot chat")

    def complete(self, body: dict[str, Any], sink: ChunkSink, *, streamed: bool = True) -> None:
        """Stream a text completion for an OpenAI-style body into sink (`streamed`: see chat)."""
        raise EngineError(400, "this model cannot complete text")

    def embed(self, inputs: list[str] | list[list[int]], truncate: bool) -> Embeddings:
        """Embed texts (or the model's own token ids). Over-long inputs are cut to
        the model's window when truncate is set, else refused with a 400."""
        raise EngineError(400, "this model cannot embed")

    def rerank(self, query: str, documents: list[str]) -> Scores:
        """Relevance of each document to query, in document order (cross-encoders)."""
        raise EngineError(400, "this model is not a reranker")

    def transcribe(self, audio: bytes, *, language: str | None = None, prompt: str | None = None,
                   temperature: float = 0.0) -> Transcription:
        """Speech in an audio file (any format the engine decodes) to text."""
        raise EngineError(400, "this model cannot transcribe audio")

    def count_tokens(self, body: dict[str, Any]) -> int | None:
        """Tokens of the prompt a chat body (`messages`) or completion body (`prompt`)
        would run, by the model's own template and tokenizer; None: cannot tell."""
        return None

    @property
    def dimensions(self) -> int | None:
        """Length of the vectors embed returns, when known."""
        return None

    # Supervision (engines in worker processes; in-process engines cannot end alone) ----

    def supervise(self, name: str, on_exit: Callable[[str], None]) -> None:
        """Call on_exit(reason), from any thread, when the engine ends unexpectedly;
        name is the model's, for messages and logs."""

    def kill(self, reason: str) -> bool:
        """End a hung engine at once if that is possible (False: it is not)."""
        return False

    @property
    def waiting(self) -> int:
        """Requests that wait for a slot and have not reached the engine yet."""
        return 0

    @abstractmethod
    def close(self) -> None:
        """Free the model. No call may be running."""
