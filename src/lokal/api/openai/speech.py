"""POST /v1/audio/speech: OpenAI's text to speech.

`model`, `input` (at most 4096 characters), `voice` (a name, or `{"id": name}`),
`response_format` mp3 (default), opus, aac, flac, wav or pcm (raw 16-bit mono at
24 kHz, as OpenAI's), `speed` 0.25-4.0, `instructions` (accepted; Piper and Kokoro
voices cannot follow them), `stream_format` `audio` (default: the file's bytes,
sent sentence by sentence as they are made) or `sse` (`speech.audio.delta` events
with base64 audio, then `speech.audio.done` with the usage: lokal counts the input's
characters as its input tokens; speech has no output tokens here). LocalAI's
`language` is read too.
"""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from lokal.api.errors import openai_envelope
from lokal.api.respond import respond, sse
from lokal.api.speech import AudioRenderer, start
from lokal.engines.base import AudioChunk
from lokal.errors import BadRequest, LokalError
from lokal.formats.audio import FORMATS
from lokal.models import synthesis
from lokal.tasks import SpeakTask, SpeechUsage

router = APIRouter()

MAX_INPUT = 4096
PCM_RATE = 24000  # OpenAI's pcm: 24 kHz, 16-bit signed, little-endian, no header


class SpeechRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    input: str
    voice: str | dict[str, Any] | None = None
    response_format: str = "mp3"
    speed: float = 1.0
    instructions: str | None = None
    stream_format: str = "audio"
    language: str | None = None  # LocalAI's extension (its /v1/audio/speech is its /tts)

    @field_validator("voice")
    @classmethod
    def _voice(cls, value: Any) -> Any:
        if isinstance(value, dict):  # a custom voice object: {"id": "NAME"}
            voice_id = value.get("id")
            if not isinstance(voice_id, str) or not voice_id:
                raise ValueError('a voice object is {"id": "NAME"}')
            return voice_id
        return value

    def check(self) -> None:
        if len(self.input) > MAX_INPUT:
            raise BadRequest(f"Invalid value for 'input': it is {len(self.input)} characters long; the "
                             f"maximum is {MAX_INPUT}.", param="input")
        if not self.input.strip():
            raise BadRequest("Invalid value for 'input': it is empty.", param="input")
        if self.response_format not in FORMATS:
            raise BadRequest(f"Invalid value for 'response_format': {self.response_format!r}; use one of "
                             f"{', '.join(FORMATS)}.", param="response_format")
        if not synthesis.MIN_SPEED <= self.speed <= synthesis.MAX_SPEED:
            raise BadRequest(f"Invalid value for 'speed': {self.speed}; it must be between "
                             f"{synthesis.MIN_SPEED} and {synthesis.MAX_SPEED}.", param="speed")
        if self.stream_format not in ("audio", "sse"):
            raise BadRequest(f"Invalid value for 'stream_format': {self.stream_format!r}; use audio or sse.",
                             param="stream_format")


class SpeechEvents(AudioRenderer):
    """OpenAI's `stream_format: sse`: the encoded audio in `speech.audio.delta` events."""

    def __init__(self, fmt: str, **kwargs: Any) -> None:
        super().__init__(fmt, **kwargs)
        self.media_type = "text/event-stream"

    @staticmethod
    def _delta(data: bytes) -> bytes:
        if not data:
            return b""
        return sse({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode("ascii")})

    def feed(self, chunks: list[AudioChunk]) -> bytes:
        return self._delta(self.encode(chunks))

    def end(self, usage: SpeechUsage) -> bytes:
        tail = super().end(usage)
        return self._delta(tail) + sse({"type": "speech.audio.done", "usage": {
            "input_tokens": usage.characters, "output_tokens": 0, "total_tokens": usage.characters}})

    def fail(self, err: LokalError) -> bytes:
        super().fail(err)
        return sse({"type": "error", **openai_envelope(err)})

    def whole(self, chunks: list[AudioChunk], usage: SpeechUsage) -> Response:
        return Response(self.feed(chunks) + self.end(usage), media_type=self.media_type)


@router.post("/audio/speech", summary="Generate audio from text", response_class=Response)
async def create_speech(body: SpeechRequest, request: Request) -> Response:
    body.check()
    rate = PCM_RATE if body.response_format == "pcm" else None
    renderer: AudioRenderer
    if body.stream_format == "sse":
        renderer = SpeechEvents(body.response_format, rate=rate)
    else:
        renderer = AudioRenderer(body.response_format, rate=rate)
    # `instructions` is accepted and not followed: Piper and Kokoro voices take no style prompt.
    task = SpeakTask(body.model.strip(), body.input, voice=body.voice, speed=body.speed,
                     language=body.language or None)
    started = await start(request, task)
    return await respond(request, started, renderer, stream=True)
