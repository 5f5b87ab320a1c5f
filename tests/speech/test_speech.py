"""Text to speech through lokal's routes with a real Piper voice, heard back by Whisper.

The round trip is the test: lokal speaks a sentence, lokal's own Whisper model
(tiny.en) transcribes it, and the words must come back. Every format decodes with
PyAV; streams are read with the openai SDK's own helpers; a five-sentence input
streams its first sentence before the rest is made, and a client that leaves stops it.
"""

from __future__ import annotations

import base64
import io
import wave

import httpx
import pytest

from tests.speech.conftest import PIPER, decode, transcribe, word_error_rate

SENTENCE = "The quick brown fox jumps over the lazy dog."
#: tiny.en hears Piper's joe near perfectly; a fifth of the words wrong would mean broken speech
MAX_WER = 0.2
FIVE = ("The first sentence is about the weather. The second one talks about the sea. "
        "Then comes a third sentence about mountains. A fourth sentence mentions rivers. "
        "And the fifth sentence ends the story.")


def wav_seconds(data: bytes) -> float:
    with wave.open(io.BytesIO(data)) as w:
        return w.getnframes() / w.getframerate()


@pytest.fixture(scope="module")
def reference_wav(speech_server) -> bytes:
    response = httpx.post(f"{speech_server.base}/tts", timeout=300,
                          json={"model": PIPER, "input": SENTENCE})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav"
    return response.content


def test_round_trip_english(speech_server, reference_wav: bytes) -> None:
    rate, samples, peak = decode(reference_wav)
    assert rate == 22050 and peak > 0.1
    assert 1.5 < samples / rate < 6.0  # nine words
    heard = transcribe(speech_server, reference_wav)
    assert word_error_rate(SENTENCE, heard) <= MAX_WER, heard


def test_sdk_create_every_format_decodes(openai_client, reference_wav: bytes) -> None:
    """Each response_format decodes with PyAV at its stated rate, within 10 % of the WAV's length."""
    expected = wav_seconds(reference_wav)
    stated = {"mp3": 22050, "opus": 48000, "aac": 22050, "flac": 22050, "wav": 22050}
    for fmt, rate in stated.items():
        audio = openai_client.audio.speech.create(model=PIPER, voice="joe", input=SENTENCE,
                                                  response_format=fmt).content
        got_rate, samples, peak = decode(audio)
        assert got_rate == rate, fmt
        assert abs(samples / rate - expected) <= 0.1 * expected, (fmt, samples / rate, expected)
        assert peak > 0.1, fmt
    # pcm: raw 16-bit mono at OpenAI's 24 kHz
    pcm = openai_client.audio.speech.create(model=PIPER, voice="joe", input=SENTENCE, response_format="pcm").content
    assert len(pcm) % 2 == 0
    assert abs(len(pcm) / 2 / 24000 - expected) <= 0.1 * expected


def test_sdk_streaming_response_is_heard(openai_client, speech_server) -> None:
    with openai_client.audio.speech.with_streaming_response.create(
            model=PIPER, voice="joe", input=SENTENCE, response_format="wav") as response:
        assert response.headers["content-type"] == "audio/wav"
        parts = list(response.iter_bytes())
    audio = b"".join(parts)
    assert audio[:4] == b"RIFF"
    assert word_error_rate(SENTENCE, transcribe(speech_server, audio)) <= MAX_WER


def test_sse_events_parse_with_the_sdk(openai_client, speech_server) -> None:
    import openai
    from openai._streaming import Stream

    raw = openai_client.audio.speech.with_raw_response.create(
        model=PIPER, voice="joe", input="Hello there. How are you today?", response_format="pcm",
        extra_body={"stream_format": "sse"})
    assert raw.headers["content-type"].startswith("text/event-stream")
    http = raw.http_response
    events = list(Stream(cast_to=object, response=httpx.Response(200, content=http.content, request=http.request),
                         client=openai_client))
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    done = events[-1]
    assert done["type"] == "speech.audio.done"
    assert done["usage"]["input_tokens"] == done["usage"]["total_tokens"] > 0
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert len(events) >= 3  # one delta per sentence at least
    assert 1.0 < len(pcm) / 2 / 24000 < 6.0
    assert isinstance(openai.__version__, str)


def test_first_sentence_streams_and_a_client_gone_stops_synthesis(speech_server) -> None:
    """Read the first audio of a five-sentence stream, then leave: the engine must have sent
    it before synthesising the rest, and stops instead of finishing them."""
    with httpx.Client(timeout=300) as client:
        with client.stream("POST", f"{speech_server.base}/v1/audio/speech",
                           json={"model": PIPER, "voice": "joe", "input": FIVE, "response_format": "pcm",
                                 "stream_format": "sse"}) as response:
            assert response.status_code == 200
            first = next(response.iter_lines())
            while not first.startswith("data:"):
                first = next(response.iter_lines())
            assert '"speech.audio.delta"' in first
    log = speech_server.wait_log("(stopped)", timeout=120)
    line = [ln for ln in log.splitlines() if "(stopped)" in ln][-1]
    spoken = int(line.split("spoke ")[1].split(" ")[0])
    assert spoken < 5, line


def test_whole_text_is_all_there(speech_server) -> None:
    response = httpx.post(f"{speech_server.base}/tts", timeout=300, json={"model": "joe", "input": FIVE})
    assert response.status_code == 200
    seconds = wav_seconds(response.content)
    assert 6.0 < seconds < 25.0
    heard = transcribe(speech_server, response.content)
    assert word_error_rate(FIVE, heard) <= MAX_WER, heard


def test_localai_tts_options(speech_server) -> None:
    base = speech_server.base
    response = httpx.post(f"{base}/tts", timeout=300, json={
        "model": "joe", "input": "Short.", "response_format": "flac", "sample_rate": 16000, "backend": "piper"})
    assert response.status_code == 200 and response.headers["content-type"] == "audio/flac"
    assert decode(response.content)[0] == 16000
    response = httpx.post(f"{base}/tts", timeout=300, json={"model": "joe", "input": "Short.", "backend": "kokoro"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "backend"
    streamed = httpx.post(f"{base}/tts", timeout=300, json={"model": "joe", "input": SENTENCE, "stream": True})
    assert streamed.status_code == 200 and streamed.content[:4] == b"RIFF"
    assert decode(streamed.content)[1] > 22050


def test_speed_changes_length(openai_client) -> None:
    normal = decode(openai_client.audio.speech.create(model=PIPER, voice="joe", input=SENTENCE,
                                                      response_format="flac").content)
    fast = decode(openai_client.audio.speech.create(model=PIPER, voice="joe", input=SENTENCE,
                                                    response_format="flac", speed=2.0).content)
    assert fast[1] < 0.7 * normal[1]


def test_elevenlabs_routes(speech_server) -> None:
    base = speech_server.base
    response = httpx.post(f"{base}/v1/text-to-speech/joe", timeout=300, json={"model_id": PIPER, "text": SENTENCE})
    assert response.status_code == 200 and response.content[:4] == b"RIFF"  # LocalAI answers WAV
    response = httpx.post(f"{base}/v1/text-to-speech/joe/stream?output_format=mp3_44100_128", timeout=300,
                          json={"model_id": PIPER, "text": SENTENCE})
    assert response.status_code == 200 and response.headers["content-type"] == "audio/mpeg"
    rate, samples, _ = decode(response.content)
    assert rate == 44100 and samples > rate
    response = httpx.post(f"{base}/v1/text-to-speech/alloy", timeout=300, json={"model_id": PIPER, "text": "Hi."})
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert detail["param"] == "voice" and "joe" in detail["message"]


def test_errors(openai_client, speech_server) -> None:
    import openai

    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.audio.speech.create(model=PIPER, voice="alloy", input="Hello.")
    assert caught.value.body["param"] == "voice" and "joe" in caught.value.body["message"]
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.audio.speech.create(model=PIPER, voice="joe", input="x" * 4097)
    assert caught.value.body["param"] == "input"
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.chat.completions.create(model=PIPER, messages=[{"role": "user", "content": "hi"}])
    assert "It serves: speak" in caught.value.body["message"]
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.audio.speech.create(model="whisper-1", voice="joe", input="Hello.")
    assert "It serves: transcribe" in caught.value.body["message"]
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.audio.speech.create(model=PIPER, voice="joe", input="Hello.", extra_body={"language": "ja"})
    assert caught.value.body["param"] == "language"


def test_models_list_voices(openai_client) -> None:
    models = {m.id: m for m in openai_client.models.list().data}
    assert models[PIPER].model_extra["capabilities"] == ["speak"]
    assert models[PIPER].model_extra["voices"] == ["joe"]
    assert models["kokoro-ja"].model_extra["voices"][0] == "jf_alpha"
    assert models["silero-vad"].model_extra["capabilities"] == ["vad"]

