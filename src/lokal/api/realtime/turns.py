"""The input audio buffer, server VAD turn detection and transcription of user audio.

Appended pcm16 (24 kHz) collects in the buffer. With server VAD on, every
`CHECK_MS` of new audio the buffer (at 16 kHz, float) is scored by the VAD model
(`models.synthesis.detect_speech`, with the session's threshold and silence): the
first speech is `input_audio_buffer.speech_started` (and cancels an answer still
running: barge-in); a speech run closed by `silence_duration_ms` of silence is
`speech_stopped`, then the buffer is committed as a user message, transcribed by the
transcription model (Whisper) and, with `create_response`, answered. While no one
speaks the buffer keeps only the last `prefix_padding_ms` (at least `KEEP_MS`), so
checks stay short whatever the session's length.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import lokal.api.realtime.protocol as p
import lokal.api.realtime.render as render
from lokal.api.realtime.items import Item
from lokal.formats.audio import wav_header
from lokal.models.serving import transcribe
from lokal.models.synthesis import detect_speech
from lokal.tasks import TranscribeTask, VadTask

log = logging.getLogger(__name__)

CHECK_MS = 100
KEEP_MS = 1000
PAD_MS = 30
BYTES_PER_MS = p.RATE * 2 // 1000


def to_vad_input(pcm: bytes) -> bytes:
    """pcm16 at 24 kHz as float32 samples at 16 kHz (what Silero hears)."""
    import numpy as np

    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    count = samples.size * 2 // 3
    if count == 0:
        return b""
    positions = np.arange(count, dtype=np.float64) * 1.5
    return np.interp(positions, np.arange(samples.size), samples).astype("<f4").tobytes()


class Turns:
    def __init__(self, session: Any) -> None:
        self.session = session
        self.buffer = bytearray()
        self.start_ms = 0  # session audio time of the buffer's first sample
        self.speaking = False
        self.speech_start_ms = 0
        self.item_id: str | None = None
        self._checked = 0  # buffer bytes at the last check
        self._check: asyncio.Task[Any] | None = None
        #: for bench/realtime.py: when speech stopped and the last transcription took
        self.marks: dict[str, float] = {}

    def buffered_ms(self) -> float:
        return len(self.buffer) / BYTES_PER_MS

    def append(self, pcm: bytes) -> None:
        self.buffer += pcm
        detection = self.session.config.get("turn_detection")
        if detection is None or (self._check is not None and not self._check.done()):
            return
        if len(self.buffer) - self._checked >= CHECK_MS * BYTES_PER_MS:
            self._check = self.session.spawn(self._vad(detection))

    def clear(self) -> None:
        self.start_ms += len(self.buffer) // BYTES_PER_MS
        self.buffer.clear()
        self._checked = 0
        self.speaking = False

    def take_all(self) -> bytes:
        pcm = bytes(self.buffer)
        self.clear()
        return pcm

    def _drop(self, count: int) -> None:
        count -= count % 2
        del self.buffer[:count]
        self.start_ms += count // BYTES_PER_MS
        self._checked = max(0, self._checked - count)

    async def _vad(self, detection: dict[str, Any]) -> None:
        session = self.session
        snapshot = bytes(self.buffer)
        self._checked = len(snapshot)
        task = VadTask(model=session.roles.vad_model or "", audio=to_vad_input(snapshot), rate=16000,
                       threshold=float(detection["threshold"]), min_silence_ms=int(detection["silence_duration_ms"]),
                       speech_pad_ms=PAD_MS)
        try:
            segments = await detect_speech(session.app.state.registry, task)
        except Exception as exc:  # noqa: BLE001 - told to the client; the session goes on
            await session.fail(exc)
            return
        length_ms = len(snapshot) / BYTES_PER_MS
        if not self.speaking:
            if not segments:
                keep = max(int(detection["prefix_padding_ms"]), KEEP_MS) * BYTES_PER_MS
                if len(snapshot) > keep:
                    self._drop(len(snapshot) - keep)
                return
            self.speaking = True
            self.item_id = render.new_id("item")
            self.speech_start_ms = self.start_ms + int(segments[0].start * 1000)
            await session.emit("input_audio_buffer.speech_started", audio_start_ms=self.speech_start_ms,
                               item_id=self.item_id)
            await session.barge_in()
            # Audio before the speech less the prefix padding is not part of the turn.
            before = int(segments[0].start * 1000) - int(detection["prefix_padding_ms"])
            if before > 0:
                self._drop(before * BYTES_PER_MS)
            return
        last = segments[-1] if segments else None
        end_ms = last.end * 1000 if last is not None else 0.0
        if last is not None and length_ms - end_ms < int(detection["silence_duration_ms"]) - PAD_MS:
            return  # still speaking, or not silent long enough
        self.marks["speech_stopped"] = time.monotonic()
        offset = self.start_ms
        audio_end_ms = offset + int(end_ms)
        item_id = self.item_id or render.new_id("item")
        await session.emit("input_audio_buffer.speech_stopped", audio_end_ms=audio_end_ms, item_id=item_id)
        turn = bytes(self.buffer[:len(snapshot)])
        self._drop(len(snapshot))
        self.speaking = False
        await self.commit(turn, item_id)
        if detection.get("create_response", True):
            try:
                await session.respond(None)
            except p.EventError as exc:
                await session.fail(exc)

    async def commit(self, pcm: bytes, item_id: str | None = None) -> None:
        """pcm as a user message: committed, created, and transcribed beside the session."""
        session = self.session
        item_id = item_id or render.new_id("item")
        previous = session.items[-1].id if session.items else None
        await session.emit("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id)
        item = Item(render.message(item_id, "user", [{"type": "input_audio", "transcript": None}]))
        item.transcript = self.transcribe(item, pcm)
        await session.add_item(item)

    def transcribe(self, item: Item, pcm: bytes) -> asyncio.Future[str]:
        """The transcript of item's audio (pcm16, 24 kHz), on its way; its events when it comes."""
        session = self.session
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def run() -> None:
            settings = session.config.get("input_audio_transcription") or {}
            model = settings.get("model") or session.roles.transcription_model
            try:
                if model is None:
                    raise p.EventError("This server has no transcription model: send text messages.",
                                       code="model_not_found")
                started = time.monotonic()
                task = TranscribeTask(model=model, audio=wav_header(p.RATE, len(pcm)) + pcm,
                                      language=settings.get("language"), prompt=settings.get("prompt"))
                result = await transcribe(session.app.state.registry, task)
                self.marks["transcription_seconds"] = time.monotonic() - started
                text = result.text.strip()
            except asyncio.CancelledError:
                future.cancel()
                raise
            except Exception as exc:  # noqa: BLE001 - told to the client as OpenAI's failed event
                future.set_result("")
                error = exc if isinstance(exc, p.EventError) else None
                await session.emit("conversation.item.input_audio_transcription.failed", item_id=item.id,
                                   content_index=0, error={"type": "transcription_error",
                                                           "code": error.code if error else None,
                                                           "message": str(exc), "param": None})
                return
            for part in item.wire["content"]:
                if part.get("type") in ("input_audio", "audio"):
                    part["transcript"] = text
            future.set_result(text)
            if session.config.get("input_audio_transcription") is not None:
                await session.emit("conversation.item.input_audio_transcription.completed", item_id=item.id,
                                   content_index=0, transcript=text)

        session.spawn(run())
        return future
