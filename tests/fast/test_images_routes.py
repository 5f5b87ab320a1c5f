"""The images routes where no image model is needed: what is refused before a model is
asked, a chat model asked for an image, generated-image URLs that do not exist."""

from __future__ import annotations

import pytest

from tests.fakeengine import MODEL


@pytest.mark.parametrize("body,param", [
    ({"prompt": ""}, "prompt"),
    ({"prompt": "x" * 4001}, "prompt"),
    ({"size": "huge"}, "size"),
    ({"n": 99}, "n"),
    ({"step": 0}, "step"),
    ({"background": "transparent"}, "background"),
    ({"model": None}, "model"),
])
def test_bad_image_requests_are_400_before_any_model_is_asked(fake_server, body: dict, param: str) -> None:
    server = fake_server()
    request = {"model": MODEL, "prompt": "a cat", **body}
    with server.client() as client:
        answer = client.post("/v1/images/generations", json={k: v for k, v in request.items() if v is not None})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param
    assert server.engines == []


def test_a_chat_model_asked_for_an_image_says_what_it_serves(fake_server) -> None:
    server = fake_server()
    with server.client() as client:
        answer = client.post("/v1/images/generations", json={"model": MODEL, "prompt": "a cat"})
        assert answer.status_code == 400
        error = answer.json()["error"]
        assert error["param"] == "model"
        assert error["message"] == ("The model 'fake' does not support image generation. "
                                    "It serves: chat, complete.")
        edit = client.post("/v1/images/edits", data={"model": MODEL, "prompt": "a cat"},
                           files={"image": ("a.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)})
        assert edit.status_code == 400 and edit.json()["error"]["param"] in ("image", "model")
        assert client.post("/v1/images/edits", json={"model": MODEL}).status_code == 400
        assert client.post("/images/generations", json={"model": "nope", "prompt": "a"}).status_code == 404
    assert server.engines == []


def test_generated_image_urls_that_lokal_did_not_make_are_404(fake_server) -> None:
    server = fake_server(api_key="sk-right")
    with server.client() as client:
        for name in ("A" * 43 + ".png", "..%2F..%2Fetc%2Fpasswd", "x.png"):
            answer = client.get(f"/generated-images/{name}")
            assert answer.status_code == 404, name  # not 401: the URL is the capability
        assert client.post("/v1/images/generations", json={"model": MODEL, "prompt": "a"}).status_code == 401
