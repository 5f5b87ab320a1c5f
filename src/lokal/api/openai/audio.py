"""POST /v1/audio/transcriptions: speech to text, OpenAI's multipart API.

The audio file comes as multipart/form-data with the model name; the answer is
OpenAI's json ({"text"}), text, srt, vtt or verbose_json.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from lokal.api.errors import APIError
from lokal.engines.base import Transcription
from lokal.models import serving
from lokal.tasks import TranscribeTask

router = APIRouter()

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")

USAGE = ("Send multipart/form-data with the audio in the field 'file' and the model name in "
         "'model' (as OpenAI's audio.transcriptions.create does).")


def timestamp(seconds: float, separator: str) -> str:
    """HH:MM:SS,mmm (SRT) or HH:MM:SS.mmm (WebVTT)."""
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _cues(result: Transcription) -> list[tuple[float, float, str]]:
    cues = [(float(s["start"]), float(s["end"]), str(s["text"]).strip()) for s in result.segments]
    cues = [cue for cue in cues if cue[2]]
    if not cues and result.text:
        cues = [(0.0, float(result.duration or 0.0), result.text)]
    return cues


def to_srt(result: Transcription) -> str:
    return "".join(f"{n}\n{timestamp(start, ',')} --> {timestamp(end, ',')}\n{text}\n\n"
                   for n, (start, end, text) in enumerate(_cues(result), start=1))


def to_vtt(result: Transcription) -> str:
    return "WEBVTT\n\n" + "".join(f"{timestamp(start, '.')} --> {timestamp(end, '.')}\n{text}\n\n"
                                  for start, end, text in _cues(result))


def _blank(value: str | None) -> str | None:
    return value if value is not None and value.strip() else None


@router.post("/audio/transcriptions", summary="Transcribe audio into text")
async def create_transcription(
    request: Request,
    file: Annotated[UploadFile | str | None, File(
        description="The audio file: mp3, wav, m4a, ogg, flac, webm, mp4 and more. Required.")] = None,
    model: Annotated[str | None, Form(description="A speech model, e.g. whisper-1. Required.")] = None,
    language: Annotated[str | None, Form(description="ISO-639-1 code of the spoken language.")] = None,
    prompt: Annotated[str | None, Form(description="Text to guide the style or spellings.")] = None,
    response_format: Annotated[str | None, Form(
        description="json (default), text, srt, vtt or verbose_json.")] = "json",
    temperature: Annotated[float | None, Form(description="Sampling temperature, 0 to 1.")] = None,
    vad_filter: Annotated[bool, Form(description="lokal: transcribe only where voice activity "
                                                 "detection (Silero VAD) hears speech, skipping silence.")] = False,
) -> Response:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/"):
        raise APIError(400, f"The request body is not multipart/form-data. {USAGE}")
    name = _blank(model)
    if name is None:
        raise APIError(400, f"Missing required parameter: 'model'. {USAGE}", param="model")
    if file is None:
        raise APIError(400, f"Missing required parameter: 'file' (the audio file). {USAGE}",
                       param="file")
    if isinstance(file, str):
        raise APIError(400, "Invalid value for 'file': it must be an uploaded file (a multipart part "
                            "with a filename), not a text field.", param="file")
    fmt = (_blank(response_format) or "json").strip().lower()
    if fmt not in RESPONSE_FORMATS:
        raise APIError(400, f"Invalid value for 'response_format': {response_format!r}; use one "
                            f"of {', '.join(RESPONSE_FORMATS)}.", param="response_format")
    temp = 0.0 if temperature is None else temperature
    if not 0.0 <= temp <= 1.0:
        raise APIError(400, "Invalid value for 'temperature': it must be between 0 and 1.",
                       param="temperature")
    audio = await file.read()
    await file.close()
    if not audio:
        raise APIError(400, "Invalid file: the audio file is empty.", param="file")
    result = await serving.transcribe(request.app.state.registry, TranscribeTask(
        name.strip(), audio, language=_blank(language), prompt=_blank(prompt), temperature=temp,
        vad_filter=vad_filter))
    if fmt == "text":
        return PlainTextResponse(result.text + "\n")
    if fmt == "srt":
        return PlainTextResponse(to_srt(result))
    if fmt == "vtt":
        return PlainTextResponse(to_vtt(result), media_type="text/vtt")
    if fmt == "verbose_json":
        body: dict[str, Any] = {"task": "transcribe", "language": result.language,
                                "duration": result.duration, "text": result.text,
                                "segments": result.segments}
        return JSONResponse(body)
    return JSONResponse({"text": result.text})
