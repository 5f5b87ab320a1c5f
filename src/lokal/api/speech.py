"""Speech out for every API family: audio chunks into an answer, streamed or whole.

A family's route validates its wire format into a `SpeakTask`, starts it with
`models.synthesis.speak` (errors before the first audio are HTTP errors in the
family's envelope) and answers with `respond`, giving it a renderer: `AudioRenderer`
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
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from lokal.api.errors import as_lokal_error
from lokal.engines.base import AudioChunk
from lokal.errors import LokalError
from lokal.formats.audio import AudioEncoder
from lokal.models.synthesis import Synthesis

log = logging.getLogger(__name__)

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass
class SpeechUsage:
    """What a synthesis took: the input's characters and the audio's length."""

    characters: int
    seconds: float = 0.0


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
        return self.encoder.finish() if self.encoder is not None else b""

    def fail(self, err: LokalError) -> bytes:
        """An audio stream has no place for an error: it ends short (the log says why)."""
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


async def respond(request: Request, synthesis: Synthesis, renderer: AudioRenderer, *, stream: bool,
                  text: str) -> Response:
    """The answer to a started synthesis: streamed through renderer, or whole."""
    usage = SpeechUsage(len(text))
    if not stream:
        watcher = asyncio.create_task(_watch_disconnect(request, synthesis))
        try:
            chunks = [chunk async for chunk in synthesis.chunks()]
        finally:
            watcher.cancel()
        usage.seconds = sum(len(c.pcm) // 2 for c in chunks) / (synthesis.rate or 1)
        return renderer.whole(chunks, usage)

    async def body() -> AsyncIterator[bytes]:
        watcher = asyncio.create_task(_watch_disconnect(request, synthesis))
        samples = 0
        try:
            head = renderer.start()
            if head:
                yield head
            async for chunk in synthesis.chunks():
                samples += len(chunk.pcm) // 2
                data = renderer.feed([chunk])
                if data:
                    yield data
            usage.seconds = samples / (synthesis.rate or 1)
            yield renderer.end(usage)
        except Exception as exc:  # noqa: BLE001 - reported in-stream where the format can
            err = as_lokal_error(exc)
            log.error("speech for model %s failed after %d samples: %s", synthesis.entry.name, samples, err.message)
            tail = renderer.fail(err)
            if tail:
                yield tail
        finally:
            watcher.cancel()
            renderer.close()
            await synthesis.close()

    headers = dict(STREAM_HEADERS)
    return StreamingResponse(body(), media_type=renderer.media_type, headers=headers)
