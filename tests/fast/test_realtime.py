"""The Realtime API on the fake engine, through the openai SDK's realtime client: a text
conversation's events, error events for bad input (the session goes on), the API key
at the WebSocket upgrade, client secrets, an unknown model."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import openai
import pytest
import websockets.exceptions
import websockets.sync.client as ws_client

from lokal.api.realtime import render
from lokal.errors import BadRequest, ContextOverflowError, EngineError, NotFound
from tests.fakeengine import MODEL


def _client(server: Any, key: str = "k") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base}/v1", api_key=key, max_retries=0,
                         websocket_base_url=server.base.replace("http", "ws") + "/v1")


def _until(conn: Any, kind: str) -> list[Any]:
    events = []
    while True:
        event = conn.recv()
        events.append(event)
        if event.type == kind:
            return events


def test_text_conversation_events(fake_server: Any) -> None:
    server = fake_server("Paris is the capital. It is in France.")
    with _client(server).beta.realtime.connect(model=MODEL) as conn:
        created = conn.recv()
        assert created.type == "session.created" and created.session.model == MODEL
        conn.session.update(session={"modalities": ["text"], "instructions": "Answer briefly.",
                                     "turn_detection": None, "temperature": 0.7})
        updated = conn.recv()
        assert updated.type == "session.updated" and updated.session.instructions == "Answer briefly."
        conn.conversation.item.create(item={"type": "message", "role": "user",
                                            "content": [{"type": "input_text", "text": "Capital of France?"}]})
        assert conn.recv().type == "conversation.item.created"
        conn.response.create()
        events = _until(conn, "response.done")
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.output_item.added", "conversation.item.created",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.text.done", "response.content_part.done", "response.output_item.done",
                          "response.done"]
    text = "".join(e.delta for e in events if e.type == "response.text.delta")
    assert text == "Paris is the capital. It is in France."
    done = events[-1].response
    assert done.status == "completed" and done.usage.output_tokens > 0
    assert done.output[0].content[0].text == text
    assert "Answer briefly." in server.engines[0].calls[-1].text


def test_bad_input_gets_error_events_and_the_session_goes_on(fake_server: Any) -> None:
    server = fake_server("Still here.", realtime_max_frame_bytes=4096)
    with _client(server).beta.realtime.connect(model=MODEL) as conn:
        conn.recv()
        conn.send({"type": "no.such.event", "event_id": "mine"})
        error = conn.recv()
        assert error.type == "error" and error.error.code == "invalid_value" and error.error.param == "type"
        assert error.error.event_id == "mine"
        conn.send({"type": "input_audio_buffer.append", "audio": "not base64!!"})
        error = conn.recv()
        assert error.type == "error" and error.error.type == "invalid_request_error" and "base64" in error.error.message
        conn.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\0" * 8000).decode()})
        error = conn.recv()
        assert error.type == "error" and "4096" in error.error.message
        conn.session.update(session={"temperature": 7})
        error = conn.recv()
        assert error.type == "error" and error.error.code == "decimal_above_max_value"
        assert error.error.param == "session.temperature"
        conn.session.update(session={"turn_detection": {"type": "server_vad", "threshold": 2}})
        assert conn.recv().type == "error"
        conn.session.update(session={"input_audio_format": "g711_ulaw"})
        assert conn.recv().error.code == "invalid_value"
        conn.session.update(session={"voice": "alloy"})
        assert conn.recv().type == "error"  # no speech model here: no voice at all, never another
        conn.input_audio_buffer.commit()
        assert conn.recv().error.code == "input_audio_buffer_commit_empty"
        conn.response.cancel()
        assert conn.recv().error.code == "response_cancel_not_active"
        conn.send({"type": "conversation.item.truncate", "item_id": "nope", "content_index": 0, "audio_end_ms": 5})
        assert conn.recv().error.code == "item_not_found"
        # ... and it still serves.
        conn.session.update(session={"modalities": ["text"], "turn_detection": None})
        assert conn.recv().type == "session.updated"
        conn.conversation.item.create(item={"type": "message", "role": "user",
                                            "content": [{"type": "input_text", "text": "hi"}]})
        conn.response.create()
        assert _until(conn, "response.done")[-1].response.status == "completed"


def test_unknown_model_is_an_error_event(fake_server: Any) -> None:
    server = fake_server()
    with _client(server).beta.realtime.connect(model="no-such-model") as conn:
        error = conn.recv()
        assert error.type == "error" and error.error.code == "model_not_found"
        assert "no-such-model" in error.error.message


def test_api_key_applies_to_the_upgrade(fake_server: Any) -> None:
    server = fake_server(api_key="k")
    url = server.base.replace("http", "ws") + f"/v1/realtime?model={MODEL}"
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            ws_client.connect(url, additional_headers=headers, open_timeout=10)
        assert refused.value.response.status_code == 401
    with pytest.raises(websockets.exceptions.InvalidStatus):  # the SDK, with a wrong key
        _client(server, "wrong").beta.realtime.connect(model=MODEL).__enter__()
    with _client(server, "k").beta.realtime.connect(model=MODEL) as conn:
        assert conn.recv().type == "session.created"
    # A browser's way: the key in a subprotocol; the server picks "realtime".
    with ws_client.connect(url, subprotocols=["realtime", "openai-insecure-api-key.k"], open_timeout=10) as ws:
        assert ws.subprotocol == "realtime"
        assert '"session.created"' in ws.recv(timeout=10)
    # A client secret minted with the key works for the upgrade, and only there.
    minted = httpx.post(f"{server.base}/v1/realtime/sessions", json={"model": MODEL},
                        headers={"Authorization": "Bearer k"})
    assert minted.status_code == 200, minted.text
    secret = minted.json()["client_secret"]["value"]
    with _client(server, secret).beta.realtime.connect(model=MODEL) as conn:
        assert conn.recv().type == "session.created"
    assert httpx.get(f"{server.base}/v1/models", headers={"Authorization": f"Bearer {secret}"}).status_code == 401
    assert httpx.post(f"{server.base}/v1/realtime/sessions", json={"model": MODEL}).status_code == 401
    assert httpx.post(f"{server.base}/v1/realtime/client_secrets", json={"session": {"model": "nope"}},
                      headers={"Authorization": "Bearer k"}).status_code == 404



def test_every_lokal_error_becomes_an_error_event_with_openais_code() -> None:
    # A refusal of any status is an event (a 400 or 500 from the engine once raised instead);
    # the codes are OpenAI's where it has one.
    cases = [(NotFound("no such model"), "model_not_found"), (BadRequest("bad", param="x"), None),
             (ContextOverflowError(9000, 2048), "context_length_exceeded"), (EngineError(500, "boom"), None)]
    for err, code in cases:
        event = render.refusal(err, event_id="event_1")
        assert event["type"] == "error"
        assert event["error"] == {"type": err.type, "code": code, "message": err.message, "param": err.param,
                                  "event_id": "event_1"}
    assert render.refusal(NotFound("gone"), param="model")["error"]["param"] == "model"
