"""A scripted engine for fast API tests: no model, chunks in xllamacpp's shape.

`FakeEngine` implements `Engine` the way `LlamaCppEngine` behaves (checked
against xllamacpp 2026.10.11549): chunks in the OpenAI streaming shape (chat: a
first `delta.role` chunk with `content: null`, one chunk per token, a finish chunk
with an empty delta, then a `choices: []` usage chunk per choice; completion: one
`text` chunk per token, the last one carrying `finish_reason` and the usage);
the sink's True stops generation at once (no further chunk, no usage, a normal
return); an engine error is an `EngineError`. At most `slots` requests generate at
once; the others wait for a slot, as the engine's tasks wait for its slots (a
request takes one slot whatever its n; the engine takes one per choice).

What a request gets is a script: a list of steps, or a callable that answers each
`FakeRequest` (mode and body) with one, so a test can answer by prompt. Steps:
`reply(*tokens)` / `words(text)` (tokens, finish chunk and usage, for every choice
or one), `Chunk(raw)`, `sleep(s)` (silent; cancel unnoticed), `fail(status, ...)`
(an EngineError), `crash(exc)` (any exception), `forever()` (tokens until the sink
says stop: a generation only a disconnect or timeout ends) and `stall(gate)` (a
stuck engine: silent, deaf to cancel, until the gate or `unstick` is set)::

    FakeEngine(options, script=lambda req: [reply("Hi", "!")] if "hello" in req.text
               else [fail(400, "no")])

Every request is recorded (`calls`) with the body the engine got, the chunks it
emitted, and how it ended, so tests assert what the engine was asked and whether
a client that went away made it stop.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from lokal.engines.base import (Engine, ChunkSink, Embeddings, EngineError, LoadOptions,
                                Scores, Transcription)

# Steps ------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """Generate tokens, as the engine streams them, for one choice or for all.

    index None: every choice the request asks for (prompts x n), one after the
    other. finish None: the tokens only (no finish chunk, no usage), for a stream
    that goes on with a later step (an error, a stall)."""

    tokens: tuple[str, ...]
    finish: str | None = "stop"
    index: int | None = None
    interval: float = 0.0  # seconds between tokens
    prompt_tokens: int | None = None  # default: words in the prompt


@dataclass(frozen=True)
class Chunk:
    """One raw chunk, passed to the sink as it is."""

    data: dict[str, Any]


@dataclass(frozen=True)
class Sleep:
    """A pause with nothing emitted (a slow prompt): cancel is not noticed meanwhile."""

    seconds: float


@dataclass(frozen=True)
class Fail:
    """The engine refuses or fails: an EngineError with this status."""

    status: int
    message: str
    kind: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Forever:
    """Tokens without end (a long generation): stops only when the sink says so.
    After `limit` seconds it fails, so that a test that forgets to stop it ends."""

    token: str = "x"
    interval: float = 0.002
    limit: float = 60.0
    index: int = 0


@dataclass(frozen=True)
class Stall:
    """A stuck engine: nothing emitted, the sink never asked, until `gate` (default: the
    engine's `unstick` event) is set or `limit` seconds pass; then the script goes on."""

    gate: threading.Event | None = None
    limit: float = 60.0


@dataclass(frozen=True)
class Crash:
    """An engine bug: any exception, raised as it is (not an EngineError)."""

    exc: BaseException


Step = Union[Reply, Chunk, Sleep, Fail, Forever, Stall, Crash]


def reply(*tokens: str, finish: str | None = "stop", index: int | None = None,
          interval: float = 0.0, prompt_tokens: int | None = None) -> Reply:
    """Tokens as the engine would stream them (see `Reply`)."""
    return Reply(tuple(tokens), finish, index, interval, prompt_tokens)


def words(text: str, **kwargs: Any) -> Reply:
    """A reply whose tokens are text's words (each but the first with its leading space)."""
    parts = text.split(" ")
    return reply(*[p if i == 0 else " " + p for i, p in enumerate(parts)], **kwargs)


def fail(status: int, message: str = "engine error", kind: str | None = None, **details: Any) -> Fail:
    return Fail(status, message, kind, details)


def crash(exc: BaseException | None = None) -> Crash:
    return Crash(exc or RuntimeError("fake engine crashed"))


def sleep(seconds: float) -> Sleep:
    return Sleep(seconds)


def forever(token: str = "x", interval: float = 0.002, limit: float = 60.0) -> Forever:
    return Forever(token, interval, limit)


def stall(gate: threading.Event | None = None, limit: float = 60.0) -> Stall:
    return Stall(gate, limit)


# Requests and their record -----------------------------------------------------


@dataclass
class FakeRequest:
    """One engine call: what a script sees, and what it did (for assertions)."""

    mode: str  # "chat", "completion" or "infill"
    body: dict[str, Any]
    streamed: bool = True  # whether the client reads the answer as it is made
    chunks: list[dict[str, Any]] = field(default_factory=list)
    stopped: bool = False  # the sink said stop
    error: EngineError | None = None
    done: threading.Event = field(default_factory=threading.Event)  # the call returned
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None

    @property
    def text(self) -> str:
        """The prompt as text: every message's content, or the prompt(s), joined."""
        if self.mode == "chat":
            return "\n".join(_content(m.get("content")) for m in self.body.get("messages") or [])
        if self.mode == "infill":
            return f"{self.body.get('input_prefix', '')}<gap>{self.body.get('input_suffix', '')}"
        prompt = self.body.get("prompt")
        if isinstance(prompt, list):
            return "\n".join(p if isinstance(p, str) else " ".join(map(str, p)) for p in prompt)
        return str(prompt or "")

    @property
    def last_user(self) -> str:
        """The last user message's text (chat), else the prompt."""
        for message in reversed(self.body.get("messages") or []):
            if message.get("role") == "user":
                return _content(message.get("content"))
        return self.text

    @property
    def prompts(self) -> int:
        prompt = self.body.get("prompt")
        if self.mode == "completion" and isinstance(prompt, list) and prompt \
                and isinstance(prompt[0], (str, list)):
            return len(prompt)
        return 1

    @property
    def choices(self) -> int:
        return self.prompts * max(1, int(self.body.get("n") or 1))

    @property
    def output(self) -> str:
        """All text the engine emitted (every choice, in emission order)."""
        out = []
        for chunk in self.chunks:
            for choice in chunk.get("choices") or []:
                out.append(choice.get("text") or (choice.get("delta") or {}).get("content") or "")
        return "".join(out)


def _content(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text") or "" for p in content if isinstance(p, dict))
    return ""


Script = Union[Sequence[Step], Callable[[FakeRequest], Iterable[Step]], str]


class _Stop(Exception):
    """The sink said stop."""


class FakeEngine(Engine):
    """A scripted stand-in for a loaded GGUF model (see the module docstring)."""

    def __init__(self, options: LoadOptions, script: Script = "Hello from the fake engine.", *,
                 dimensions: int = 8) -> None:
        self.options = options
        self.script = script
        self.purpose = ("rerank" if options.rerank else "embed" if options.embeddings
                        else "transcribe" if options.model_path.suffix != ".gguf" else "generate")
        self.slots = options.parallel
        self._slots = threading.BoundedSemaphore(options.parallel)
        self._lock = threading.Lock()
        self._dimensions = dimensions
        self.calls: list[FakeRequest] = []
        self.active = 0  # requests generating now
        self.peak = 0  # most requests generating at once
        self.unstick = threading.Event()  # releases Stall steps without a gate of their own
        self.closed = False
        self.embedded: list[list[str] | list[list[int]]] = []

    # Generation -------------------------------------------------------------

    def chat(self, body: dict[str, Any], sink: ChunkSink, *, streamed: bool = True) -> None:
        self._run("chat", body, sink, streamed)

    def complete(self, body: dict[str, Any], sink: ChunkSink, *, streamed: bool = True) -> None:
        self._run("completion", body, sink, streamed)

    def infill(self, body: dict[str, Any], sink: ChunkSink, *, streamed: bool = True) -> None:
        if self.purpose != "generate":
            return super().infill(body, sink, streamed=streamed)
        self._run("infill", body, sink, streamed)

    def text_op(self, op: str, payload: dict[str, Any]) -> Any:
        """llama-server's shapes, on words: a token is a word (its id a hash), the template
        `role: content` lines."""
        if op == "tokenize":
            words = str(payload.get("content", "")).split()
            ids = [_word_id(w) for w in words]
            if payload.get("with_pieces"):
                return {"tokens": [{"id": i, "piece": w} for i, w in zip(ids, words)]}
            return {"tokens": ids}
        if op == "detokenize":
            return {"content": " ".join(f"<{int(t)}>" for t in payload.get("tokens") or [])}
        if op == "apply-template":
            return {"prompt": "".join(f"{m.get('role')}: {_content(m.get('content'))}\n"
                                      for m in payload.get("messages") or []) + "assistant:"}
        if op == "props":
            return {"default_generation_settings": {"n_ctx": self.options.context_size},
                    "total_slots": self.slots, "model_path": str(self.options.model_path),
                    "chat_template": "fake", "modalities": {"vision": False}, "build_info": "fake"}
        if op == "slots":
            return [{"id": i, "n_ctx": self.options.context_size, "is_processing": False}
                    for i in range(self.slots or 1)]
        return super().text_op(op, payload)

    def _steps(self, request: FakeRequest) -> list[Step]:
        script = self.script
        if isinstance(script, str):
            return [words(script)]
        if callable(script):
            return list(script(request))
        return list(script)

    def _run(self, mode: str, body: dict[str, Any], sink: ChunkSink, streamed: bool = True) -> None:
        if self.closed:
            raise RuntimeError("FakeEngine used after close()")
        # The engine gets a copy with streaming forced on, as LlamaCppEngine sends it.
        body = json.loads(json.dumps(dict(body, stream=True, stream_options={"include_usage": True})))
        request = FakeRequest(mode, body, streamed)
        with self._lock:
            self.calls.append(request)
        self._slots.acquire()
        with self._lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            _Run(self, request, sink).run(self._steps(request))
        except _Stop:
            request.stopped = True
        except EngineError as exc:
            request.error = exc
            raise
        finally:
            with self._lock:
                self.active -= 1
            self._slots.release()
            request.ended = time.monotonic()
            request.done.set()

    # Other purposes -----------------------------------------------------------

    @property
    def dimensions(self) -> int | None:
        return self._dimensions if self.purpose == "embed" else None

    def embed(self, inputs: list[str] | list[list[int]], truncate: bool) -> Embeddings:
        if self.purpose != "embed":
            return super().embed(inputs, truncate)
        self.embedded.append(inputs)
        vectors = [_vector(item, self._dimensions) for item in inputs]
        return Embeddings(vectors, sum(_count(item) for item in inputs))

    def rerank(self, query: str, documents: list[str]) -> Scores:
        if self.purpose != "rerank":
            return super().rerank(query, documents)
        asked = set(query.lower().split())
        scores = [len(asked & set(d.lower().split())) / max(1, len(asked)) for d in documents]
        return Scores(scores, _count(query) + sum(_count(d) for d in documents))

    def transcribe(self, audio: bytes, *, language: str | None = None, prompt: str | None = None,
                   temperature: float = 0.0, vad_filter: bool = False) -> Transcription:
        if self.purpose != "transcribe":
            return super().transcribe(audio, language=language, prompt=prompt, temperature=temperature)
        return Transcription(text=f"{len(audio)} bytes of audio", language=language or "en",
                             duration=1.0, segments=[{"id": 0, "start": 0.0, "end": 1.0,
                                                      "text": f"{len(audio)} bytes of audio"}])

    def close(self) -> None:
        self.closed = True
        self.unstick.set()


class _Run:
    """One engine call running its steps; chunk ids and state as the engine keeps them."""

    def __init__(self, engine: FakeEngine, request: FakeRequest, sink: ChunkSink) -> None:
        self.engine = engine
        self.request = request
        self.sink = sink
        self.id = "chatcmpl-" + uuid.uuid4().hex[:32]
        self.created = int(time.time())
        self.started: set[int] = set()
        self.generated: dict[int, int] = {}

    def emit(self, chunk: dict[str, Any]) -> None:
        self.request.chunks.append(chunk)
        if self.sink(chunk):
            raise _Stop()

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {"choices": choices, "created": self.created, "id": self.id,
                                 "model": str(self.engine.options.model_path),
                                 "system_fingerprint": "b0-fake",
                                 "object": "chat.completion.chunk" if self.request.mode == "chat"
                                 else "text_completion"}
        if usage is not None:
            chunk["usage"] = usage
        return chunk

    def _prompt_tokens(self, index: int, override: int | None) -> int:
        if override is not None:
            return override
        if self.request.mode == "completion" and self.request.prompts > 1:
            prompt = self.request.body["prompt"][index // max(1, int(self.request.body.get("n") or 1))]
            return max(1, _count(prompt))
        return max(1, _count(self.request.text))

    def begin(self, index: int, prompt_tokens: int | None = None) -> None:
        """A choice's first chunk: chat's role chunk; with `return_progress`, the prompt's
        progress on it (the engine has processed the prompt when the first token comes)."""
        if index in self.started:
            return
        self.started.add(index)
        progress = None
        if self.request.body.get("return_progress"):
            total = self._prompt_tokens(index, prompt_tokens)
            progress = {"total": total, "cache": 0, "processed": total, "time_ms": 0.0}
        if self.request.mode == "chat":
            chunk = self._chunk([{"finish_reason": None, "index": index,
                                  "delta": {"role": "assistant", "content": None}}])
        elif progress is not None:
            chunk = self._chunk([{"text": "", "index": index, "logprobs": None, "finish_reason": None}])
        else:
            return
        if progress is not None:
            chunk["prompt_progress"] = progress
        self.emit(chunk)

    def token(self, index: int, text: str, prompt_tokens: int | None = None) -> None:
        self.begin(index, prompt_tokens)
        if self.request.mode == "chat":
            self.emit(self._chunk([{"finish_reason": None, "index": index, "delta": {"content": text}}]))
        else:
            self.emit(self._chunk([{"text": text, "index": index, "logprobs": None, "finish_reason": None}]))
        self.generated[index] = self.generated.get(index, 0) + 1

    def finish(self, index: int, reason: str, prompt_tokens: int | None) -> None:
        prompt = self._prompt_tokens(index, prompt_tokens)
        completion = self.generated.get(index, 0)
        usage = {"completion_tokens": completion, "prompt_tokens": prompt,
                 "total_tokens": prompt + completion, "prompt_tokens_details": {"cached_tokens": 0}}
        self.begin(index, prompt_tokens)
        if self.request.mode == "chat":
            self.emit(self._chunk([{"finish_reason": reason, "index": index, "delta": {}}]))
            self.emit(self._chunk([], usage))
        else:
            self.emit(self._chunk([{"text": "", "index": index, "logprobs": None, "finish_reason": reason}],
                                  usage))

    def run(self, steps: list[Step]) -> None:
        for step in steps:
            if isinstance(step, Reply):
                indices = range(self.request.choices) if step.index is None else [step.index]
                for index in indices:
                    for i, text in enumerate(step.tokens):
                        if i and step.interval:
                            time.sleep(step.interval)
                        self.token(index, text, step.prompt_tokens)
                    if step.finish is not None:
                        self.finish(index, step.finish, step.prompt_tokens)
            elif isinstance(step, Chunk):
                self.emit(step.data)
            elif isinstance(step, Sleep):
                time.sleep(step.seconds)
            elif isinstance(step, Fail):
                raise EngineError(step.status, step.message, step.kind, dict(step.details))
            elif isinstance(step, Forever):
                deadline = time.monotonic() + step.limit
                while time.monotonic() < deadline:
                    self.token(step.index, step.token)
                    time.sleep(step.interval)
                raise EngineError(500, f"fake engine: Forever ran {step.limit:g} s without being stopped")
            elif isinstance(step, Stall):
                gate = step.gate or self.engine.unstick
                if not gate.wait(step.limit):
                    raise EngineError(500, f"fake engine: Stall not released within {step.limit:g} s")
            elif isinstance(step, Crash):
                raise step.exc
            else:  # pragma: no cover - a test's typo
                raise TypeError(f"not a fake engine step: {step!r}")


def _word_id(word: str) -> int:
    return int(hashlib.sha256(word.encode()).hexdigest()[:6], 16)


def _count(item: str | list[int]) -> int:
    return len(item) if isinstance(item, list) else len(item.split())


def _vector(item: str | list[int], dimensions: int) -> list[float]:
    """A deterministic unit vector for an input."""
    digest = hashlib.sha256(json.dumps(item).encode()).digest()
    raw = [digest[i % len(digest)] - 127.5 for i in range(dimensions)]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [v / norm for v in raw]
