"""Text to speech and voice activity detection, whatever API family they came through.

`speak` leases the model, resolves the voice (the request's, else the config's
`tts.voice`, else the model's first; an unknown one is a 400 naming the model's
voices, never another voice), starts the engine on a thread and waits for the first
sentence's audio, so that errors before any audio (unknown model or voice, a
language the voice cannot speak) are HTTP errors. The `Synthesis` it returns yields
`AudioChunk`s as the engine makes them; `stop` (the client went away) makes the
engine stop before its next sentence, and the model is given back once the engine
call has returned.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Any

from lokal.engines.base import AudioChunk, Speech, SpeechSegment
from lokal.errors import BadRequest
from lokal.models.catalog import ModelEntry
from lokal.models.generation import engine_chunks
from lokal.models.registry import ModelRegistry
from lokal.models.speech import tts_config
from lokal.tasks import SpeakTask, SpeechUsage, VadTask

MAX_SPEED = 4.0
MIN_SPEED = 0.25


def voices_of(entry: ModelEntry) -> tuple[str, ...]:
    """The voices a speech model offers (read from its files when the catalog described it)."""
    speech = entry.file.speech
    return tuple(speech.voices) if speech is not None else ()


def default_voice(entry: ModelEntry) -> str | None:
    voices = voices_of(entry)
    configured = tts_config(entry.config).voice
    if configured is not None:
        return configured
    return voices[0] if voices else None


def resolve_voice(entry: ModelEntry, asked: str | None) -> str:
    """The voice to speak with; BadRequest naming the model's voices when it has not asked's."""
    voices = voices_of(entry)
    voice = asked if asked else default_voice(entry)
    if voice is None or (voices and voice not in voices):
        named = f"Unknown voice '{voice}'" if voice else "No voice given"
        raise BadRequest(f"{named} for the model '{entry.name}': its voices are "
                         f"{', '.join(voices) or '(none)'}.", param="voice")
    return voice


class Synthesis:
    """A running `speak` call: chunks as they are made, then `speech` (its summary)."""

    def __init__(self, entry: ModelEntry, voice: str, language: str | None, first: list[AudioChunk],
                 batches: AsyncIterator[list[Any]], cancel: threading.Event,
                 stack: contextlib.AsyncExitStack, result: list[Speech], characters: int) -> None:
        self.entry = entry
        self._characters = characters
        self._samples = 0
        self.voice = voice
        self.language = language
        self.first = first
        self.rate = first[0].rate if first else 0
        self._batches = batches
        self._cancel = cancel
        self._stack = stack
        self._result = result

    @property
    def speech(self) -> Speech | None:
        """The engine's summary, once it has returned."""
        return self._result[0] if self._result else None

    @property
    def usage(self) -> SpeechUsage:
        return SpeechUsage(self._characters, self._samples / (self.rate or 1))

    async def batches(self) -> AsyncIterator[list[AudioChunk]]:
        """Every batch of chunks, the first ones included; closes the synthesis at the end
        (an `api.respond.Answer`)."""
        try:
            if self.first:
                self._count(self.first)
                yield self.first
            async for batch in self._batches:
                self._count(batch)
                yield batch
        finally:
            await self.close()

    async def collect(self) -> list[AudioChunk]:
        return [chunk async for batch in self.batches() for chunk in batch]

    def _count(self, chunks: list[AudioChunk]) -> None:
        self._samples += sum(len(c.pcm) // 2 for c in chunks)

    def on_close(self, callback: Any) -> None:
        """Call callback when the synthesis closes (the API stops watching its client)."""
        self._stack.callback(callback)

    def stop(self) -> None:
        """The client went away: the engine stops before its next sentence."""
        self._cancel.set()

    async def close(self) -> None:
        self._cancel.set()
        await self._stack.aclose()


async def speak(registry: ModelRegistry, task: SpeakTask) -> Synthesis:
    """Start synthesising task; see the module's docstring."""
    if not MIN_SPEED <= task.speed <= MAX_SPEED:
        raise BadRequest(f"Invalid value for 'speed': {task.speed}; it must be between {MIN_SPEED} "
                         f"and {MAX_SPEED}.", param="speed")
    if not task.text.strip():
        raise BadRequest("The input text is empty: nothing to say.", param="input")
    stack = contextlib.AsyncExitStack()
    try:
        entry = registry.entry(task.model)
        if isinstance(entry, ModelEntry) and "speak" in entry.tasks:
            voice = resolve_voice(entry, task.voice)  # before loading: a typo costs no load
        lease = await stack.enter_async_context(registry.lease(task.model, "speak"))
        entry = lease.entry
        voice = resolve_voice(entry, task.voice)
        language = task.language or tts_config(entry.config).language
        cancel = threading.Event()
        release = lease.hold()
        result: list[Speech] = []

        def run(sink: Any) -> None:
            result.append(lease.engine.speak(task.text, voice=voice, speed=task.speed,
                                             language=language, sink=sink))

        batches = engine_chunks(run, cancel, on_done=release)
        stack.push_async_callback(_close, batches, cancel)
        first: list[AudioChunk] = []
        async for batch in batches:
            first = batch
            break
    except BaseException:
        await stack.aclose()
        raise
    return Synthesis(entry, voice, language, first, batches, cancel, stack, result, len(task.text))


async def _close(batches: Any, cancel: threading.Event) -> None:
    cancel.set()
    with contextlib.suppress(Exception):
        await batches.aclose()


async def detect_speech(registry: ModelRegistry, task: VadTask) -> list[SpeechSegment]:
    async with registry.lease(task.model, "vad") as lease:
        return await lease.run(lambda: lease.engine.detect_speech(
            task.audio, rate=task.rate, threshold=task.threshold, min_silence_ms=task.min_silence_ms,
            speech_pad_ms=task.speech_pad_ms))


def samples_as_bytes(samples: list[float]) -> bytes:
    """LocalAI's VAD input (a JSON list of float samples) as float32 little-endian bytes."""
    import array
    import sys

    data = array.array("f", samples)
    if sys.byteorder != "little":
        data.byteswap()
    return data.tobytes()
