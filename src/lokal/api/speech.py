"""Speech out for every API family: audio chunks into an answer, streamed or whole.

A family's route validates its wire format into a `SpeakTask`, starts it with
`start` (errors before the first audio are HTTP errors in the family's envelope; a
client that goes away stops it) and answers with `api.respond.respond`, giving it a
renderer: `AudioRenderer`
(the audio file itself, streamed as chunked bytes or whole with its length) or a
family's own event renderer (OpenAI's `speech.audio.delta` events). Renderers have the
shape every family's will have (start, feed, keepalive, end, fail, whole); the
items they are fed are `AudioChunk`s and the usage a `SpeechUsage`.

A streamed answer sends each sentence's audio as soon as the engine has made it; a
client that goes away stops the synthesis before the next sentence.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import Request
from fastapi.responses import Response

from lokal.engines.base import AudioChunk
from lokal.errors import LokalError
from lokal.formats.audio import AudioEncoder
from lokal.models.synthesis import Synthesis, speak
from lokal.tasks import SpeakTask, SpeechUsage

log = logging.getLogger(__name__)

class AudioRenderer:
    """The audio file of the asked format: bytes as they are encoded, or the whole file.

    `rate` asks for an output sample rate (else the engine's, or the nearest the codec
    takes); `bitrate` in bits/s for mp3, opus and aac."""

    def __init__(self, fmt: str, *, rate: int | None = None, bitrate: int | None = None,
                 filename: str | None = None) -> None:
        from lokal.formats.audio import MEDIA_TYPES

        self.format = fmt
        self.media_type = MEDIA_TYPES[fmt]
        self.filename = filename
        self._rate = rate
        self._bitrate = bitrate
        self.encoder: AudioEncoder | None = None

    def _encoder(self, in_rate: int, streamed: bool) -> AudioEncoder:
        if self.encoder is None:
            self.encoder = AudioEncoder(self.format, in_rate, rate=self._rate, bitrate=self._bitrate,
                                        streamed=streamed)
        return self.encoder

    def encode(self, chunks: list[AudioChunk], streamed: bool = True) -> bytes:
        return b"".join(self._encoder(c.rate, streamed).feed(c.pcm) for c in chunks)

    def start(self) -> bytes:
        return b""

    def feed(self, chunks: list[AudioChunk]) -> bytes:
        return self.encode(chunks)

    def keepalive(self) -> bytes:
        return b""

    def end(self, usage: SpeechUsage) -> bytes:
        tail = self.encoder.finish() if self.encoder is not None else b""
        self.close()
        return tail

    def fail(self, err: LokalError) -> bytes:
        """An audio stream has no place for an error: it ends short (the log says why)."""
        log.error("speech failed after it began: %s", err.message)
        self.close()
        return b""

    def whole(self, chunks: list[AudioChunk], usage: SpeechUsage) -> Response:
        body = self.encode(chunks, streamed=False) + self.end(usage)
        headers = {}
        if self.filename:
            headers["Content-Disposition"] = f'attachment; filename="{self.filename}"'
        return Response(body, media_type=self.media_type, headers=headers)

    def close(self) -> None:
        if self.encoder is not None:
            self.encoder.close()


async def _watch_disconnect(request: Request, synthesis: Synthesis) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            synthesis.stop()
            return


async def start(request: Request, task: SpeakTask) -> Synthesis:
    """Start synthesising task for request; a client that goes away stops it."""
    synthesis = await speak(request.app.state.registry, task)
    watcher = asyncio.create_task(_watch_disconnect(request, synthesis))
    synthesis.on_close(watcher.cancel)
    return synthesis
