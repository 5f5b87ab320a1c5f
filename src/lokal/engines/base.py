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


def bad_param(message: str, param: str) -> EngineError:
    """A 400 about one parameter of the request (its name travels in details too, so a
    worker process's error keeps it)."""
    error = EngineError(400, message, details={"param": param})
    error.param = param
    return error

ChunkSink = Callable[[dict[str, Any]], bool]
#: Image generation's progress, in order: {"event": "start", "prompt_tokens", "steps"}, then per
#: image {"event": "step", "image", "step", "steps"} and {"event": "partial", "image", "index",
#: "data"} (a preview, encoded), and {"event": "image", "image", "data", "seed"}. True: stop.
ProgressSink = Callable[[dict[str, Any]], bool]

#: llama-server's text utilities an engine may answer (`Engine.text_op`).
TEXT_OPS = ("tokenize", "detokenize", "apply-template", "props", "slots")


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
    voices_path: Path | None = None  # a speech model's voice pack (Kokoro)
    #: engine settings a LocalAI config's `options:` ask for (llama.cpp: reasoning_format)
    engine_params: dict[str, Any] = field(default_factory=dict)
    diffusion: DiffusionOptions | None = None  # an image model's pipeline and limits

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
class DiffusionOptions:
    """How an image model is loaded (a config's `diffusers:` block, `step`, `cfg_scale`)."""

    info: Any  # lokal.formats.diffusion.DiffusionInfo, read by the catalog
    pipeline: str | None = None  # a diffusers pipeline class (None: the folder's own)
    scheduler: tuple[str, dict[str, Any]] | None = None  # scheduler class and its options
    enabled: list[str] | None = None  # pipeline parameters a request may set (None: all)
    clip_skip: int | None = None
    steps: int | None = None  # when a request sets none
    guidance: float | None = None
    config_folder: Path | None = None  # configs and tokenizer for a single-file checkpoint
    max_side: int = 1024  # the largest side a request may ask for (the memory estimate's)
    options: list[str] = field(default_factory=list)  # LocalAI's `options:` (stable-diffusion.cpp)


@dataclass
class ImageJob:
    """Images an engine is asked to make: checked and sized by the caller."""

    prompt: str
    width: int
    height: int
    negative_prompt: str | None = None
    n: int = 1
    steps: int | None = None
    guidance: float | None = None
    seed: int = 0  # image k uses seed + k
    image: bytes | None = None  # image-to-image: the input (any format Pillow reads)
    mask: bytes | None = None  # inpainting: white (or transparent, OpenAI's way) is repainted
    strength: float | None = None
    output_format: str = "png"  # png, jpeg or webp
    compression: int | None = None  # jpeg/webp quality
    partial_images: int = 0  # previews sent while denoising (each costs a VAE decode)


@dataclass
class ImageResult:
    """What an image job ended with; the images themselves went to the progress sink."""

    images: int  # made (fewer than asked when stopped)
    prompt_tokens: int = 0
    stopped_at: tuple[int, int] | None = None  # (image, step) where a stop request ended it


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


@dataclass
class AudioChunk:
    """Speech made so far: 16-bit signed little-endian mono samples at `rate` Hz, for
    one sentence of the text (`sentence` counts from 0) and the phonemes it spoke."""

    pcm: bytes
    rate: int
    sentence: int = 0
    text: str = ""
    phonemes: str = ""


#: Receives each chunk of speech as it is made; returns True to stop (the client went away).
AudioSink = Callable[[AudioChunk], bool]


@dataclass
class Speech:
    """What a `speak` call made: the rate, how many samples and sentences, and whether
    the sink stopped it early."""

    rate: int
    samples: int = 0
    sentences: int = 0
    stopped: bool = False


@dataclass
class SpeechSegment:
    """Where a voice-activity detector heard speech, in seconds from the start."""

    start: float
    end: float


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
                   temperature: float = 0.0, vad_filter: bool = False) -> Transcription:
        """Speech in an audio file (any format the engine decodes) to text; `vad_filter`:
        transcribe only where a voice-activity detector hears speech (skips silence)."""
        raise EngineError(400, "this model cannot transcribe audio")

    def infill(self, body: dict[str, Any], sink: ChunkSink, *, streamed: bool = True) -> None:
        """Fill in the middle (llama-server's /infill): body has `input_prefix`, `input_suffix`
        (and `input_extra`, `prompt`) and the sampling fields; chunks in the text-completion
        shape of `complete`."""
        raise EngineError(400, "this model cannot fill in the middle")

    def text_op(self, op: str, payload: dict[str, Any]) -> Any:
        """llama-server's text utilities on this model, answered in its shapes: `tokenize`,
        `detokenize`, `apply-template`, `props`, `slots` (see TEXT_OPS)."""
        raise EngineError(400, f"this model's engine has no {op}")

    def speak(self, text: str, *, voice: str, speed: float = 1.0, language: str | None = None,
              sink: AudioSink) -> Speech:
        """Synthesise text sentence by sentence, handing each sentence's audio to sink as
        soon as it is made; sink returning True stops the synthesis."""
        raise EngineError(400, "this model cannot speak (it is not a text-to-speech model)")

    @property
    def voices(self) -> tuple[str, ...]:
        """The voices speak takes (empty: not a text-to-speech model)."""
        return ()

    def detect_speech(self, audio: bytes, *, rate: int = 16000, threshold: float = 0.5,
                      min_silence_ms: int = 100, speech_pad_ms: int = 30) -> list[SpeechSegment]:
        """Where there is speech in audio: float32 little-endian mono samples at rate."""
        raise EngineError(400, "this model cannot detect voice activity")

    def generate_image(self, job: ImageJob, sink: ProgressSink) -> ImageResult:
        """Make job's images step by step, reporting progress and each image to sink;
        a sink that returns True stops the work at the next step."""
        raise EngineError(400, "this model cannot generate images")

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
