"""The one internal request per task, and what a generation yields.

Every API family (OpenAI, Ollama, Anthropic Messages, OpenAI Responses, ...)
translates its wire format into one of these tasks, and renders its answer from
the `Delta`s and `Usage` a generation produces. Model configs, templates, tool
grammars, stop words, queueing, cancellation and metrics all work on these
types, so they behave the same whatever API a request came through.

Plain dataclasses, no I/O, no engine imports: the bottom of the import graph.
Message content is normalised at validation, once: text, or typed parts when a
message carries images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]
Task = Literal["chat", "complete", "embed", "rerank", "transcribe", "speak", "vad", "image", "image_edit"]

#: Every task lokal knows, in the order a model's main task is picked. `speak` is text to
#: speech, `vad` voice activity detection (where in a recording someone speaks); `image`:
#: text to image, `image_edit`: an input image changed by a prompt (image-to-image, inpainting).
TASKS: tuple[Task, ...] = ("chat", "complete", "embed", "rerank", "transcribe", "speak", "vad", "image",
                           "image_edit")


@dataclass(slots=True)
class ImagePart:
    """An image in a message: its bytes and media type, already decoded and checked."""

    data: bytes
    media_type: str


@dataclass(slots=True)
class ToolCall:
    """A call the assistant made: `arguments` is JSON text, as the model wrote it."""

    id: str
    name: str
    arguments: str


@dataclass(slots=True)
class Message:
    role: Role
    text: str = ""
    images: list[ImagePart] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None  # role "tool": the call this is the result of
    name: str | None = None  # role "tool": the function's name, when known


@dataclass(slots=True)
class Tool:
    """A function the model may call; `parameters` is a JSON schema."""

    name: str
    description: str = ""
    parameters: dict[str, Any] | None = None


#: "auto", "none", "required" (some tool), or the name of the one tool to call.
ToolChoice = str


@dataclass(slots=True)
class ResponseFormat:
    """Structured output: any JSON object, or one matching `schema`."""

    type: Literal["json_object", "json_schema"]
    schema: dict[str, Any] | None = None
    name: str | None = None


@dataclass(slots=True)
class Sampling:
    """How to generate. None leaves a value to the model's config, then the engine."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repeat_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    ignore_eos: bool | None = None
    #: chat: return each token's logprob, with this many alternatives (0: none)
    logprobs: bool = False
    top_logprobs: int = 0
    #: False: skip the prompt cache (reproducible runs, as llama.cpp's cache_prompt)
    cache_prompt: bool | None = None
    #: llama.cpp's n_probs: probabilities of this many top tokens per generated token
    n_probs: int | None = None


@dataclass(slots=True)
class GenerationOptions:
    """What chat and text completion share beyond sampling."""

    sampling: Sampling = field(default_factory=Sampling)
    n: int = 1
    response_format: ResponseFormat | None = None
    grammar: str | None = None  # GBNF
    stream: bool = False
    timeout: float | None = None  # seconds, lokal's own per-request limit


@dataclass(slots=True)
class ChatTask:
    model: str
    messages: list[Message]
    options: GenerationOptions = field(default_factory=GenerationOptions)
    tools: list[Tool] = field(default_factory=list)
    tool_choice: ToolChoice = "auto"
    #: may the model call several tools in one turn (None: yes, OpenAI's default);
    #: only a model's own tool-call format can (lokal's JSON envelope holds one call)
    parallel_tool_calls: bool | None = None
    task: Task = "chat"


Prompt = str | list[str] | list[int] | list[list[int]]


@dataclass(slots=True)
class CompletionTask:
    model: str
    prompt: Prompt
    options: GenerationOptions = field(default_factory=GenerationOptions)
    echo: bool = False
    #: text after the gap: fill in the middle (the model's FIM format) instead of continuing
    suffix: str | None = None
    #: the legacy completions `logprobs`: alternatives per token (None: no logprobs)
    logprobs: int | None = None
    #: fill in the middle: other files for context ({"filename", "text"}), and the start of
    #: the middle already written (llama-server's /infill `input_extra` and `prompt`)
    context_files: list[dict[str, str]] = field(default_factory=list)
    middle: str = ""
    task: Task = "complete"


@dataclass(slots=True)
class EmbedTask:
    model: str
    inputs: list[str] | list[list[int]]
    #: token-id inputs: "openai" (cl100k_base, decoded to text) unless the config says "model"
    token_ids: bool = False
    dimensions: int | None = None
    truncate: bool | None = None  # None: as the model's config says
    task: Task = "embed"


@dataclass(slots=True)
class RerankTask:
    model: str
    query: str
    documents: list[str]
    top_n: int | None = None
    task: Task = "rerank"


@dataclass(slots=True)
class TranscribeTask:
    model: str
    audio: bytes
    language: str | None = None
    prompt: str | None = None
    temperature: float = 0.0
    #: transcribe only where voice activity detection hears speech
    vad_filter: bool = False
    task: Task = "transcribe"


@dataclass(slots=True)
class SpeakTask:
    """Text to speech. None leaves voice and language to the model's config (then the
    model's first voice, and the voice's own language)."""

    model: str
    text: str
    voice: str | None = None
    language: str | None = None
    speed: float = 1.0
    task: Task = "speak"


@dataclass(slots=True)
class VadTask:
    """Voice activity detection on float32 mono samples at `rate` Hz."""

    model: str
    audio: bytes  # float32 little-endian samples
    rate: int = 16000
    threshold: float = 0.5
    min_silence_ms: int = 100
    speech_pad_ms: int = 30
    task: Task = "vad"


@dataclass(slots=True)
class ImageTask:
    """Make images from a prompt (`image`), or change an input image (`image_edit`).

    Sizes are checked against the model once it is known (None: the model's own size);
    the input image and mask are bytes already checked to decode."""

    model: str
    prompt: str
    negative_prompt: str | None = None
    n: int = 1
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    seed: int | None = None
    guidance: float | None = None
    image: bytes | None = None
    image_size: tuple[int, int] | None = None  # the input image's width and height
    mask: bytes | None = None
    strength: float | None = None
    output_format: Literal["png", "jpeg", "webp"] = "png"
    compression: int | None = None  # jpeg/webp quality, 0-100
    partial_images: int = 0  # previews to send while streaming
    stream: bool = False
    task: Task = "image"


# What a generation yields ----------------------------------------------------

FinishReason = Literal["stop", "length", "tool_calls"]


@dataclass(slots=True)
class ToolCallDelta:
    """Part of a tool call: the first delta of a call has its id and name, the
    following ones carry more of its arguments (JSON text, in order)."""

    position: int  # which call of this choice (parallel calls)
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(slots=True, frozen=True)
class PromptProgress:
    """How far the engine is with a choice's prompt (llama.cpp's `prompt_progress`):
    tokens in all, taken from the prompt cache, and processed so far."""

    total: int
    cache: int = 0
    processed: int = 0
    time_ms: float = 0.0


@dataclass(slots=True)
class Delta:
    """What one choice gained since the last delta."""

    index: int = 0
    text: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCallDelta] | None = None
    #: engine logprob entries for this delta's tokens, in OpenAI's chat shape
    logprobs: list[dict[str, Any]] | None = None
    finish_reason: FinishReason | None = None
    #: the stop sequence that ended the choice, when one did
    stop_sequence: str | None = None
    #: the engine's progress through the prompt (before the first token)
    progress: PromptProgress | None = None


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class SpeechUsage:
    """What a synthesis took: the input's characters and the audio's length."""

    characters: int
    seconds: float = 0.0
