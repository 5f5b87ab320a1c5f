"""LocalAI's speech routes: `POST /tts` (text to speech) and `POST /vad`, `/v1/vad`.

`/tts` takes `{model, input, voice, backend, language}` and LocalAI's optional
`response_format`, `stream`, `sample_rate` and `speed`, and answers a WAV file (as
LocalAI does; another `response_format` converts it). `backend`, when given, must be
the engine the model is served by (lokal picks the engine from the model's files).
With `stream: true` the WAV is sent sentence by sentence as it is made.

`/vad` takes `{model, audio}` with `audio` LocalAI's JSON list of float samples
(mono, 16 kHz) and answers `{"segments": [{"start", "end"}]}` in seconds, from a
Silero VAD model (`backend: silero-vad`, or a loose `silero_vad*.onnx`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from lokal.api.respond import respond
from lokal.api.speech import AudioRenderer, start
from lokal.errors import BadRequest
from lokal.formats.audio import FORMATS, AudioFormatError, output_rate
from lokal.models import synthesis
from lokal.models.catalog import ModelEntry
from lokal.models.config import BACKEND_ALIASES
from lokal.tasks import SpeakTask, VadTask

router = APIRouter(tags=["LocalAI"])


class TTSRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    input: str
    voice: str | None = None
    backend: str | None = None
    language: str | None = None
    response_format: str | None = None
    stream: bool = False
    sample_rate: int | None = Field(None, gt=0)
    speed: float | None = None


class VADRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    audio: list[float]


def _check_backend(request: Request, model: str, backend: str) -> None:
    engine = BACKEND_ALIASES.get(backend.strip().lower())
    if engine is None:
        raise BadRequest(f"Unknown backend {backend!r}.", param="backend")
    entry = request.app.state.registry.entry(model)
    served = entry.config.engine if entry.config is not None else None
    served = served or (entry.file.kind if isinstance(entry, ModelEntry) else None)
    if served in set(BACKEND_ALIASES.values()) and engine not in (served, "auto"):
        raise BadRequest(f"The model '{entry.name}' is served by the {served} engine, not {backend!r}; "
                         "leave backend out (lokal picks the engine from the model's files).", param="backend")


@router.post("/tts", summary="Text to speech (LocalAI)", response_class=Response)
async def tts(body: TTSRequest, request: Request) -> Response:
    if not body.input.strip():
        raise BadRequest("Invalid value for 'input': it is empty.", param="input")
    fmt = (body.response_format or "wav").strip().lower()
    if fmt not in FORMATS:
        raise BadRequest(f"Invalid value for 'response_format': {body.response_format!r}; use one of "
                         f"{', '.join(FORMATS)}.", param="response_format")
    if body.sample_rate is not None:
        try:
            output_rate(fmt, body.sample_rate, body.sample_rate)
        except AudioFormatError as exc:
            raise BadRequest(f"Invalid value for 'sample_rate': {exc}.", param="sample_rate") from exc
    if body.backend:
        _check_backend(request, body.model.strip(), body.backend)
    task = SpeakTask(body.model.strip(), body.input, voice=body.voice or None, language=body.language or None,
                     speed=1.0 if body.speed is None else body.speed)
    started = await start(request, task)
    renderer = AudioRenderer(fmt, rate=body.sample_rate, filename=f"tts.{fmt}")
    return await respond(request, started, renderer, stream=body.stream)


@router.post("/vad", summary="Voice activity detection (LocalAI)")
@router.post("/v1/vad", include_in_schema=False)
async def vad(body: VADRequest, request: Request) -> dict[str, Any]:
    audio = synthesis.samples_as_bytes(body.audio)
    segments = await synthesis.detect_speech(request.app.state.registry, VadTask(body.model.strip(), audio))
    return {"segments": [{"start": s.start, "end": s.end} for s in segments]}
