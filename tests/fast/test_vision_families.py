"""Images through Ollama, Anthropic Messages and OpenAI Responses on the fake engine:
each family's image fields reach the engine body as the same image parts, and every
bad image is a 400 in the family's own envelope, naming the field.

The real engine path, through each family's own client, is in
tests/api/test_vision_families.py.
"""

from __future__ import annotations

import base64
from typing import Any

from tests.fakeengine import MODEL
from tests.fast.test_vision import data_uri, png, vision_server  # noqa: F401 - the fixture

RED, BLUE = png(2, 2, (255, 0, 0)), png(3, 1, (0, 0, 255))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def engine_images(server: Any) -> list[bytes]:
    """The images of the last engine call, in order, as bytes."""
    out = []
    for message in server.last.body["messages"]:
        if isinstance(message["content"], list):
            for part in message["content"]:
                if part["type"] == "image_url":
                    url = part["image_url"]["url"]
                    assert url.startswith("data:image/png;base64,")
                    out.append(base64.b64decode(url.split(",", 1)[1]))
    return out


def user_content(server: Any) -> Any:
    return [m for m in server.last.body["messages"] if m["role"] == "user"][-1]["content"]


# Ollama ------------------------------------------------------------------------


def test_ollama_chat_and_generate_images_reach_the_engine(vision_server: Any) -> None:  # noqa: F811
    server = vision_server()
    with server.client() as http:
        r = http.post("/api/chat", json={"model": MODEL, "stream": False, "messages": [
            {"role": "user", "content": "What is this?", "images": [b64(RED), b64(BLUE)]}]})
        assert r.status_code == 200, r.text
        assert engine_images(server) == [RED, BLUE]
        assert user_content(server)[-1] == {"type": "text", "text": "What is this?"}

        r = http.post("/api/generate", json={"model": MODEL, "stream": False, "prompt": "And this?",
                                             "images": [b64(BLUE)]})
        assert r.status_code == 200, r.text
        assert engine_images(server) == [BLUE]
        assert user_content(server) == [{"type": "image_url", "image_url": {"url": data_uri(BLUE)}},
                                        {"type": "text", "text": "And this?"}]
        # A data: URI is taken too (some clients send one).
        r = http.post("/api/chat", json={"model": MODEL, "stream": False, "messages": [
            {"role": "user", "content": "hi", "images": [data_uri(RED)]}]})
        assert r.status_code == 200, r.text
        assert engine_images(server) == [RED]


def test_ollama_image_errors_in_ollamas_shape(vision_server: Any, fake_server: Any) -> None:  # noqa: F811
    server = vision_server()
    with server.client() as http:
        calls = len(server.calls)
        for body, words in (
            ({"messages": [{"role": "user", "content": "x", "images": ["@@not base64@@"]}]},
             "messages.0.images.0: the image data is not valid base64"),
            ({"messages": [{"role": "user", "content": "x"},
                           {"role": "user", "content": "y", "images": [b64(RED), b64(b"plain text")]}]},
             "messages.1.images.1: the data is not an image"),
            ({"messages": [{"role": "user", "content": "x", "images": ["http://127.0.0.1:9/a.png"]}]},
             "not valid base64"),
        ):
            r = http.post("/api/chat", json={"model": MODEL, "stream": False, **body})
            assert r.status_code == 400, r.text
            assert list(r.json()) == ["error"] and words in r.json()["error"], r.json()
        r = http.post("/api/generate", json={"model": MODEL, "prompt": "x", "images": [b64(RED)], "raw": True})
        assert r.status_code == 400 and "raw" in r.json()["error"]
        r = http.post("/api/generate", json={"model": MODEL, "prompt": "x", "images": ["!!"]})
        assert r.status_code == 400 and r.json()["error"].startswith("images.0: ")
        assert len(server.calls) == calls  # nothing bad reached the engine
        assert "vision" in http.post("/api/show", json={"model": MODEL}).json()["capabilities"]
        tags = {m["name"]: m for m in http.get("/api/tags").json()["models"]}
        assert "vision" in tags[f"{MODEL}:latest"]["capabilities"]

    text = fake_server()
    with text.client() as http:
        r = http.post("/api/chat", json={"model": MODEL, "stream": False, "messages": [
            {"role": "user", "content": "x", "images": [b64(RED)]}]})
        assert r.status_code == 400 and f"'{MODEL}' does not take images" in r.json()["error"]
        assert list(r.json()) == ["error"]
        assert "vision" not in http.post("/api/show", json={"model": MODEL}).json()["capabilities"]
        assert http.post("/api/chat", json={"model": MODEL, "stream": False,
                                            "messages": [{"role": "user", "content": "x"}]}).status_code == 200
    assert not text.calls or all(not isinstance(m["content"], list) for c in text.calls for m in c.body["messages"])


# Anthropic ---------------------------------------------------------------------


def anthropic_image(data: bytes, media_type: str = "image/png") -> dict[str, Any]:
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": b64(data)}}


def message(*content: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": list(content)}], **fields}


def test_anthropic_image_blocks_reach_the_engine(vision_server: Any) -> None:  # noqa: F811
    server = vision_server()
    with server.client() as http:
        r = http.post("/v1/messages", json=message(anthropic_image(RED), {"type": "text", "text": "What?"},
                                                   {"type": "image", "source": {"type": "url", "url": data_uri(BLUE)}}))
        assert r.status_code == 200, r.text
        assert engine_images(server) == [RED, BLUE]
        assert user_content(server)[-1] == {"type": "text", "text": "What?"}
        # An image a tool returned (a screenshot) goes with the tool's result.
        r = http.post("/v1/messages", json={"model": MODEL, "max_tokens": 4, "messages": [
            {"role": "user", "content": "look"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "shot", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [
                {"type": "text", "text": "the screen"}, anthropic_image(BLUE)]}]}]})
        assert r.status_code == 200, r.text
        assert engine_images(server) == [BLUE]
        assert http.post("/v1/messages/count_tokens",
                         json=message(anthropic_image(RED))).json()["input_tokens"] > 0


def test_anthropic_image_errors_in_anthropics_envelope(vision_server: Any, fake_server: Any) -> None:  # noqa: F811
    server = vision_server()
    with server.client() as http:
        calls = len(server.calls)
        for block, param, words in (
            (anthropic_image(b"plain text"), "messages.0.content.1", "not an image"),
            ({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "%%%"}},
             "messages.0.content.1", "not valid base64"),
            (anthropic_image(RED, "application/pdf"), "messages.0.content.1", "not an image"),
            ({"type": "image", "source": {"type": "url", "url": "http://127.0.0.1:9/a.png"}},
             "messages.0.content.1", "ALLOW_REMOTE_IMAGES is off"),
            ({"type": "image", "source": {"type": "file", "file_id": "file_1"}}, "messages.0.content.1",
             "stores no files"),
            ({"type": "image", "source": {"type": "base64", "media_type": "image/png"}},
             "messages.0.content.1", "needs its data"),
            ({"type": "image"}, "messages.0.content.1", "missing fields"),
        ):
            for path in ("/v1/messages", "/v1/messages/count_tokens"):
                r = http.post(path, json=message({"type": "text", "text": "x"}, block))
                assert r.status_code == 400, r.text
                body = r.json()
                assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
                assert words in body["error"]["message"] and body["error"]["message"].startswith(param), body
        r = http.post("/v1/messages", json={"model": MODEL, "max_tokens": 4, "messages": [
            {"role": "user", "content": "x"}, {"role": "assistant", "content": [anthropic_image(RED)]}]})
        assert r.status_code == 400 and "belong in user messages" in r.json()["error"]["message"]
        assert len(server.calls) == calls
    text = fake_server()
    with text.client() as http:
        r = http.post("/v1/messages", json=message(anthropic_image(RED)))
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        assert f"'{MODEL}' does not take images" in r.json()["error"]["message"]


# Responses ---------------------------------------------------------------------


def response(*content: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_output_tokens": 4, "input": [{"role": "user", "content": list(content)}],
            **fields}


def test_responses_input_images_reach_the_engine(vision_server: Any) -> None:  # noqa: F811
    server = vision_server()
    with server.client() as http:
        r = http.post("/v1/responses", json=response({"type": "input_text", "text": "What?"},
                                                     {"type": "input_image", "image_url": data_uri(RED)},
                                                     {"type": "input_image", "image_url": data_uri(BLUE),
                                                      "detail": "low"}))
        assert r.status_code == 200, r.text
        assert engine_images(server) == [RED, BLUE]
        assert user_content(server)[-1] == {"type": "text", "text": "What?"}
        # An image a function returned goes with its output.
        r = http.post("/v1/responses", json={"model": MODEL, "max_output_tokens": 4, "input": [
            {"role": "user", "content": "look"},
            {"type": "function_call", "call_id": "c1", "name": "shot", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": [
                {"type": "input_text", "text": "the screen"}, {"type": "input_image", "image_url": data_uri(BLUE)}]}]})
        assert r.status_code == 200, r.text
        assert engine_images(server) == [BLUE]
        r = http.post("/v1/responses/input_tokens",
                      json=response({"type": "input_image", "image_url": data_uri(RED)}))
        assert r.status_code == 200 and r.json()["input_tokens"] > 0


def test_responses_image_errors_in_openais_envelope(vision_server: Any, fake_server: Any) -> None:  # noqa: F811
    server = vision_server()
    with server.client() as http:
        calls = len(server.calls)
        for part, words in (
            ({"type": "input_image", "file_id": "file_1"}, "stores no files"),
            ({"type": "input_image"}, "needs an image_url"),
            ({"type": "input_image", "image_url": "data:image/png;base64,!!"}, "not valid base64"),
            ({"type": "input_image", "image_url": data_uri(b"text")}, "not an image"),
            ({"type": "input_image", "image_url": "http://127.0.0.1:9/a.png"}, "ALLOW_REMOTE_IMAGES is off"),
            ({"type": "input_image", "image_url": "file:///etc/passwd"}, "never read"),
        ):
            for path in ("/v1/responses", "/v1/responses/input_tokens"):
                r = http.post(path, json=response({"type": "input_text", "text": "x"}, part))
                assert r.status_code == 400, r.text
                error = r.json()["error"]
                assert error["param"] == "input.0.content.1" and words in error["message"], error
        r = http.post("/v1/responses", json={"model": MODEL, "input": [
            {"role": "assistant", "content": [{"type": "input_image", "image_url": data_uri(RED)}]},
            {"role": "user", "content": "x"}]})
        assert r.status_code == 400 and "belong in user messages" in r.json()["error"]["message"]
        assert len(server.calls) == calls
    text = fake_server()
    with text.client() as http:
        error = http.post("/v1/responses", json=response(
            {"type": "input_image", "image_url": data_uri(RED)})).json()["error"]
        assert error["param"] == "messages" and f"'{MODEL}' does not take images" in error["message"]
