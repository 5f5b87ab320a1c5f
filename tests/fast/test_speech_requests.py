"""Speech requests refused before any model runs: every bad input is a 400 naming its
parameter, in the envelope of the family it came through; a chat model asked to speak
says what it serves."""

from __future__ import annotations

import pytest

SPEECH = "/v1/audio/speech"


def _error(response, param: str | None) -> dict:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    return error


@pytest.mark.parametrize("body, param, says", [
    ({"input": "x" * 4097}, "input", "4096"),
    ({"input": "   "}, "input", "empty"),
    ({"response_format": "ogg"}, "response_format", "mp3, opus, aac, flac, wav, pcm"),
    ({"speed": 4.5}, "speed", "0.25"),
    ({"speed": 0.2}, "speed", "4.0"),
    ({"stream_format": "chunks"}, "stream_format", "audio or sse"),
])
def test_openai_speech_bad_values(fake_server, body: dict, param: str, says: str) -> None:
    server = fake_server()
    with server.client() as client:
        request = {"model": "fake", "input": "Hello.", "voice": "joe", **body}
        error = _error(client.post(SPEECH, json=request), param)
        assert says in error["message"]


def test_chat_model_asked_to_speak_says_what_it_serves(fake_server) -> None:
    server = fake_server()
    with server.client() as client:
        error = _error(client.post(SPEECH, json={"model": "fake", "input": "Hello.", "voice": "joe"}), "model")
        assert "does not support speech synthesis" in error["message"]
        assert "It serves: chat, complete" in error["message"]
        error = _error(client.post("/tts", json={"model": "fake", "input": "Hello."}), "model")
        assert "speech synthesis" in error["message"]
        # ElevenLabs' envelope on its own paths
        response = client.post("/v1/text-to-speech/joe", json={"model_id": "fake", "text": "Hello."})
        assert response.status_code == 400
        assert response.json()["detail"]["param"] == "model"


def test_unknown_speech_model_is_404(fake_server) -> None:
    server = fake_server()
    with server.client() as client:
        response = client.post(SPEECH, json={"model": "nope", "input": "Hello.", "voice": "joe"})
        assert response.status_code == 404 and response.json()["error"]["param"] == "model"


@pytest.mark.parametrize("output_format", ["ulaw_8000", "mp3_12345_128", "pcm", "flac_22050_64"])
def test_elevenlabs_bad_output_format(fake_server, output_format: str) -> None:
    server = fake_server()
    with server.client() as client:
        response = client.post(f"/v1/text-to-speech/joe?output_format={output_format}",
                               json={"model_id": "fake", "text": "Hello."})
        assert response.status_code == 400, response.text
        assert response.json()["detail"]["param"] == "output_format"


def test_localai_tts_bad_values(fake_server) -> None:
    server = fake_server()
    with server.client() as client:
        _error(client.post("/tts", json={"model": "fake", "input": "Hi.", "response_format": "ogg"}),
               "response_format")
        _error(client.post("/tts", json={"model": "fake", "input": "Hi.", "response_format": "opus",
                                         "sample_rate": 44100}), "sample_rate")
        _error(client.post("/tts", json={"model": "fake", "input": "Hi.", "backend": "nonsense"}), "backend")
        _error(client.post("/vad", json={"model": "fake", "audio": [0.0] * 16}), "model")
