"""ElevenLabs' `POST /v1/text-to-speech/{voice_id}` and `/v1/text-to-speech/{voice_id}/stream`.

As LocalAI offers them: the body is `{text, model_id, language_code}` (`model_id` a
lokal speech model; ElevenLabs' `voice_settings.speed` is read too), the voice is
the path's `voice_id` (one of the model's voices). Without `output_format` the
answer is a WAV file, as LocalAI's; ElevenLabs' `output_format` query parameter
(`mp3_44100_128`, `pcm_16000`, `opus_48000_64`, `wav_22050`, ...: codec, sample rate
and, for mp3 and opus, kbit/s) picks another (pcm is raw 16-bit little-endian).
`/stream` sends the audio sentence by sentence as it is made.

Errors are ElevenLabs' `{"detail": {"status", "message"}}` (with `param` added).
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict

from lokal.api.respond import respond
from lokal.api.speech import AudioRenderer, start
from lokal.errors import BadRequest, LokalError
from lokal.formats.audio import AudioFormatError, output_rate
from lokal.tasks import SpeakTask

router = APIRouter(tags=["ElevenLabs"])

PREFIX = "/text-to-speech"  # under /v1 (and bare, as every route)
_OUTPUT = re.compile(r"^(mp3|pcm|opus|wav|flac)_(\d{4,6})(?:_(\d{1,3}))?$")


def elevenlabs_envelope(err: LokalError) -> dict[str, Any]:
    detail: dict[str, Any] = {"status": err.type, "message": err.message}
    if err.param:
        detail["param"] = err.param
    return {"detail": detail}




class VoiceSettings(BaseModel):
    model_config = ConfigDict(extra="allow")

    speed: float | None = None


class TextToSpeechRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    text: str
    model_id: str | None = None
    language_code: str | None = None
    voice_settings: VoiceSettings | None = None


def renderer_for(output_format: str | None) -> AudioRenderer:
    """The renderer for ElevenLabs' output_format (None: a WAV at the voice's rate)."""
    if output_format is None:
        return AudioRenderer("wav", filename="speech.wav")
    match = _OUTPUT.match(output_format.strip().lower())
    if match is None:
        raise BadRequest(f"Invalid output_format {output_format!r}: use CODEC_RATE[_KBPS] with codec mp3, "
                         "pcm, opus, wav or flac (e.g. mp3_44100_128, pcm_24000).", param="output_format")
    codec, rate_text, kbps = match.groups()
    rate = int(rate_text)
    try:
        output_rate(codec, rate, rate)
    except AudioFormatError as exc:
        raise BadRequest(f"Invalid output_format {output_format!r}: {exc}.", param="output_format") from exc
    if kbps and codec not in ("mp3", "opus"):
        raise BadRequest(f"Invalid output_format {output_format!r}: only mp3 and opus take a bit rate.",
                         param="output_format")
    bitrate = int(kbps) * 1000 if kbps else None
    return AudioRenderer(codec, rate=rate, bitrate=bitrate, filename=f"speech.{codec}")


async def _speak(voice_id: str, body: TextToSpeechRequest, request: Request, output_format: str | None,
                 stream: bool) -> Response:
    renderer = renderer_for(output_format)
    if not body.model_id or not body.model_id.strip():
        raise BadRequest("model_id is required: the name of a lokal text-to-speech model "
                         "(GET /v1/models lists them, with their voices).", param="model_id")
    if not body.text.strip():
        raise BadRequest("text is empty: nothing to say.", param="text")
    speed = body.voice_settings.speed if body.voice_settings is not None else None
    task = SpeakTask(body.model_id.strip(), body.text, voice=voice_id, language=body.language_code or None,
                     speed=1.0 if speed is None else speed)
    started = await start(request, task)
    return await respond(request, started, renderer, stream=stream)


@router.post(PREFIX + "/{voice_id}", summary="Text to speech (ElevenLabs)", response_class=Response)
async def text_to_speech(voice_id: str, body: TextToSpeechRequest, request: Request,
                         output_format: str | None = None) -> Response:
    return await _speak(voice_id, body, request, output_format, stream=False)


@router.post(PREFIX + "/{voice_id}/stream", summary="Text to speech, streamed (ElevenLabs)",
             response_class=Response)
async def text_to_speech_stream(voice_id: str, body: TextToSpeechRequest, request: Request,
                                output_format: str | None = None) -> Response:
    return await _speak(voice_id, body, request, output_format, stream=True)
