"""A spoken conversation with lokal through the openai SDK's realtime client: a question
in lokal's own voice is heard (server VAD), transcribed, answered and spoken back; a tool
call round trip; barge-in cancels a spoken answer."""

from __future__ import annotations

import base64
import time
from typing import Any

import httpx
import numpy as np
import openai

from tests.conftest import LokalServer
from tests.realtime.conftest import QUESTION, RATE, speak
from tests.speech.conftest import word_error_rate, words

#: Whisper tiny.en on a turn cut by server VAD: a word of the six may come back wrong
#: ("France" heard as "friends" when the turn's first samples fall differently)
MAX_WER = 0.2

CHUNK = RATE * 2 // 10  # 100 ms of pcm16


def connect(server: LokalServer) -> Any:
    client = openai.OpenAI(base_url=f"{server.base}/v1", api_key="none", max_retries=0,
                           websocket_base_url=server.base.replace("http", "ws") + "/v1")
    return client.beta.realtime.connect(model="smol")


def send_audio(conn: Any, pcm: bytes) -> None:
    for at in range(0, len(pcm), CHUNK):
        conn.input_audio_buffer.append(audio=base64.b64encode(pcm[at:at + CHUNK]).decode())


def until(conn: Any, kind: str, limit: int = 5000) -> list[Any]:
    events = []
    for _ in range(limit):
        event = conn.recv()
        events.append(event)
        assert event.type != "error", event
        if event.type == kind:
            return events
    raise AssertionError(f"no {kind} in {[e.type for e in events]}")


def silence(ms: int) -> bytes:
    return b"\0\0" * (RATE * ms // 1000)


def test_spoken_question_is_heard_answered_and_spoken(realtime_server: LokalServer, question: bytes) -> None:
    with connect(realtime_server) as conn:
        assert conn.recv().type == "session.created"
        conn.session.update(session={"instructions": "You are a helpful assistant. Answer in one short sentence.",
                                     "voice": "joe", "max_response_output_tokens": 40,
                                     "input_audio_transcription": {"model": "whisper-1"},
                                     "turn_detection": {"type": "server_vad", "threshold": 0.5,
                                                        "silence_duration_ms": 400, "prefix_padding_ms": 200}})
        assert conn.recv().type == "session.updated"
        send_audio(conn, silence(500) + question + silence(1200))
        events = until(conn, "response.done")
    kinds = [e.type for e in events]
    order = ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
             "input_audio_buffer.committed", "conversation.item.created", "response.created",
             "response.output_item.added", "response.content_part.added", "response.audio_transcript.delta",
             "response.audio.delta", "response.audio.done", "response.audio_transcript.done",
             "response.content_part.done", "response.output_item.done", "response.done"]
    positions = [kinds.index(k) for k in order]
    assert positions == sorted(positions), kinds
    heard = next(e for e in events if e.type == "conversation.item.input_audio_transcription.completed")
    assert "capital" in words(heard.transcript), heard.transcript
    assert word_error_rate(QUESTION, heard.transcript) <= MAX_WER, heard.transcript
    done = events[-1].response
    assert done.status in ("completed", "incomplete") and done.usage.output_tokens > 0
    transcript = next(e for e in events if e.type == "response.audio_transcript.done").transcript
    assert words(transcript)
    pcm = b"".join(base64.b64decode(e.delta) for e in events if e.type == "response.audio.delta")
    samples = np.frombuffer(pcm, dtype="<i2")
    assert samples.size > RATE // 2  # more than half a second of speech
    assert np.abs(samples).max() > 3000  # not silence
    started = next(e for e in events if e.type == "input_audio_buffer.speech_started")
    stopped = next(e for e in events if e.type == "input_audio_buffer.speech_stopped")
    assert 300 <= started.audio_start_ms < stopped.audio_end_ms <= 500 + len(question) // (RATE * 2 // 1000) + 200


def test_function_call_round_trip(realtime_server: LokalServer) -> None:
    tool = {"type": "function", "name": "get_weather", "description": "The weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
    with connect(realtime_server) as conn:
        conn.recv()
        conn.session.update(session={"modalities": ["text"], "tools": [tool], "turn_detection": None,
                                     "tool_choice": {"type": "function", "name": "get_weather"}})
        assert conn.recv().type == "session.updated"
        conn.conversation.item.create(item={"type": "message", "role": "user",
                                            "content": [{"type": "input_text", "text": "Weather in Paris?"}]})
        conn.response.create()
        events = until(conn, "response.done")
        call = next(e for e in events if e.type == "response.function_call_arguments.done")
        assert call.name == "get_weather" and "city" in call.arguments
        assert any(e.type == "response.function_call_arguments.delta" for e in events)
        assert events[-1].response.output[0].type == "function_call"
        conn.conversation.item.create(item={"type": "function_call_output", "call_id": call.call_id,
                                            "output": '{"weather": "sunny"}'})
        assert conn.recv().type == "conversation.item.created"
        conn.response.create(response={"tool_choice": "none"})
        events = until(conn, "response.done")
    assert events[-1].response.status in ("completed", "incomplete")
    assert "".join(e.delta for e in events if e.type == "response.text.delta")


STORY = "Tell me a long story about a dragon who learns to bake bread, with many sentences."
LONG = 400  # tokens: more than two cores generate and speak before the interruption is heard


def idle(server: LokalServer, model: str, within: float) -> bool:
    """Whether model computes nothing (lokal_requests_running is 0) within `within` seconds:
    an engine told to stop ends its current token and gives the model back."""
    deadline = time.monotonic() + within
    while True:
        text = httpx.get(f"{server.base}/metrics", timeout=10).text
        if not sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("lokal_requests_running{") and f'model="{model}"' in line):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def test_barge_in_cancels_the_spoken_answer(realtime_server: LokalServer) -> None:
    interruption = speak(realtime_server, "Stop, please stop. Tell me a joke instead.") + silence(1000)
    with connect(realtime_server) as conn:
        conn.recv()
        conn.session.update(session={"instructions": "You are a helpful assistant. Answer in one short sentence.",
                                     "voice": "joe", "max_response_output_tokens": 40,
                                     "input_audio_transcription": {"model": "whisper-1"},
                                     "turn_detection": {"type": "server_vad", "silence_duration_ms": 400,
                                                        "create_response": False}})
        assert conn.recv().type == "session.updated"
        conn.conversation.item.create(item={"type": "message", "role": "user",
                                            "content": [{"type": "input_text", "text": STORY}]})
        conn.response.create(response={"instructions": "You are a storyteller who tells long stories.",
                                       "max_response_output_tokens": LONG})
        events = until(conn, "response.audio.delta")
        story = events[-1].response_id
        # The user speaks as soon as the answer starts to be heard.
        send_audio(conn, interruption)
        events += until(conn, "response.done")
        done = events[-1].response
        kinds = [e.type for e in events]
        assert done.id == story and done.status == "cancelled", [k for k in kinds if "delta" not in k]
        assert done.status_details.reason == "turn_detected"
        assert "input_audio_buffer.speech_started" in kinds
        # The engine stopped: not half the tokens asked for, and the model is idle soon after
        # (the other half would keep it busy seconds more; the margin is for a loaded machine).
        # No answer is made on its own here (create_response).
        assert 0 < done.usage.output_tokens < LONG // 2, done.usage
        assert idle(realtime_server, "smol", within=3.0)
        sent = b"".join(base64.b64decode(e.delta) for e in events if e.type == "response.audio.delta")
        sent_ms = len(sent) // (RATE * 2 // 1000)
        # The interruption is a turn of its own, heard and answered.
        transcribed = "conversation.item.input_audio_transcription.completed"
        after = [] if transcribed in kinds else until(conn, transcribed)
        heard = next(e for e in events + after if e.type == transcribed)
        assert {"stop", "joke"} & set(words(heard.transcript)), heard.transcript
        conn.response.create()
        after += until(conn, "response.done")
        assert not any(getattr(e, "response_id", None) == story for e in after), \
            [e.type for e in after if getattr(e, "response_id", None) == story]
        answer = after[-1].response
        assert answer.id != story and answer.status in ("completed", "incomplete"), answer
        assert any(e.type == "response.audio.delta" for e in after)
        # The client tells what it played of the story: the item is cut there, and no later.
        item = next(e for e in events if e.type == "response.output_item.added").item
        conn.conversation.item.truncate(item_id=item.id, content_index=0, audio_end_ms=sent_ms // 2)
        truncated = until(conn, "conversation.item.truncated")[-1]
        assert truncated.item_id == item.id and truncated.audio_end_ms == sent_ms // 2
        conn.conversation.item.truncate(item_id=item.id, content_index=0, audio_end_ms=sent_ms)
        error = conn.recv()
        assert error.type == "error" and error.error.param == "audio_end_ms", error


def test_bad_input_then_still_serving(realtime_server: LokalServer) -> None:
    with connect(realtime_server) as conn:
        conn.recv()
        conn.send({"type": "input_audio_buffer.append", "audio": "%%%"})
        assert conn.recv().type == "error"
        conn.send({"type": "input_audio_buffer.append", "audio": "A" * (2 * 1024 * 1024)})
        error = conn.recv()
        assert error.type == "error" and "1048576" in error.error.message
        conn.send({"type": "session.update", "session": {"voice": "no-such-voice"}})
        assert conn.recv().type == "error"
        conn.send({"type": "session.update", "session": {"input_audio_transcription": {"model": "nope"}}})
        assert conn.recv().error.code == "model_not_found"
        conn.session.update(session={"modalities": ["text"], "turn_detection": None})
        assert conn.recv().type == "session.updated"
        conn.conversation.item.create(item={"type": "message", "role": "user",
                                            "content": [{"type": "input_text", "text": "Say hi."}]})
        conn.response.create()
        assert until(conn, "response.done")[-1].response.status in ("completed", "incomplete")
