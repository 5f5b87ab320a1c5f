"""Images through Ollama, Anthropic Messages and OpenAI Responses on the real engine, each
through its own client: the image reaches the model (the prompt grows by the image's
tokens, as in test_vision.py) and every refusal is a 400 in the family's envelope.

Shares the session's vision server (tests/api/conftest.py): `eyes` takes images,
`plain` (the same SmolLM2, no projector) does not. Answers are a token or two.
"""

from __future__ import annotations

import base64

import anthropic
import httpx
import ollama
import openai
import pytest

from tests.api.conftest import PLAIN, VISION
from tests.api.test_vision import image
from tests.conftest import LokalServer
from tests.fixtures import tiny_vision


def png(kind: str) -> bytes:
    return base64.b64decode(image(kind).split(",", 1)[1])


def b64(kind: str) -> str:
    return image(kind).split(",", 1)[1]


# Ollama ------------------------------------------------------------------------


@pytest.fixture
def ollama_client(vision_server: LokalServer) -> ollama.Client:
    return ollama.Client(host=vision_server.base, timeout=120)


def test_ollama_images_reach_the_model(ollama_client: ollama.Client) -> None:
    def chat(*images: bytes) -> ollama.ChatResponse:
        message = {"role": "user", "content": "Describe the picture.", "images": list(images) or None}
        return ollama_client.chat(VISION, messages=[message], options={"num_predict": 1, "temperature": 0})

    plain, one, two = chat(), chat(png("red")), chat(png("red"), png("noise"))
    per_image = one.prompt_eval_count - plain.prompt_eval_count
    assert per_image >= tiny_vision.IMAGE_TOKENS
    assert two.prompt_eval_count - one.prompt_eval_count == per_image
    generated = ollama_client.generate(VISION, "Describe the picture.", images=[png("red")],
                                       options={"num_predict": 1, "temperature": 0})
    text = ollama_client.generate(VISION, "Describe the picture.", options={"num_predict": 1, "temperature": 0})
    assert generated.prompt_eval_count - text.prompt_eval_count == per_image
    capabilities = ollama_client.show(VISION).capabilities
    assert capabilities is not None and "vision" in capabilities
    assert "vision" not in (ollama_client.show(PLAIN).capabilities or [])
    tags = {m.model: m for m in ollama_client.list().models}
    assert set(tags) == {f"{VISION}:latest", f"{PLAIN}:latest"}


def test_ollama_image_errors(ollama_client: ollama.Client, vision_server: LokalServer) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        ollama_client.chat(PLAIN, messages=[{"role": "user", "content": "hi", "images": [png("red")]}])
    assert info.value.status_code == 400 and f"'{PLAIN}' does not take images" in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        ollama_client.chat(VISION, messages=[{"role": "user", "content": "hi", "images": [b"plain text"]}])
    assert info.value.status_code == 400 and info.value.error.startswith("messages.0.images.0: ")
    # The client checks base64 itself: a raw body shows the server's answer to bad base64.
    r = httpx.post(f"{vision_server.base}/api/generate", timeout=60, json={
        "model": VISION, "prompt": "hi", "stream": False, "images": ["%%% not base64"]})
    assert r.status_code == 400 and r.json() == {"error": "images.0: the image data is not valid base64"}
    answer = ollama_client.chat(VISION, messages=[{"role": "user", "content": "hi", "images": [png("red")]}],
                                options={"num_predict": 1})
    assert answer.done  # still serving


# Anthropic ---------------------------------------------------------------------


@pytest.fixture
def claude(vision_server: LokalServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=vision_server.base, api_key="x", max_retries=0, timeout=120)


def image_block(kind: str) -> dict:
    return {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64(kind)}}


def prompt_tokens(usage: anthropic.types.Usage) -> int:
    return usage.input_tokens + (usage.cache_read_input_tokens or 0)


def test_anthropic_image_blocks_reach_the_model(claude: anthropic.Anthropic) -> None:
    def ask(*blocks: dict) -> anthropic.types.Message:
        content = [*blocks, {"type": "text", "text": "Describe the picture."}]
        return claude.messages.create(model=VISION, max_tokens=1,
                                      messages=[{"role": "user", "content": content}])

    plain, one = ask(), ask(image_block("red"))
    two = ask(image_block("red"), {"type": "image", "source": {"type": "url", "url": image("noise")}})
    per_image = prompt_tokens(one.usage) - prompt_tokens(plain.usage)
    assert per_image >= tiny_vision.IMAGE_TOKENS
    assert prompt_tokens(two.usage) - prompt_tokens(one.usage) == per_image
    with claude.messages.stream(model=VISION, max_tokens=1, messages=[
            {"role": "user", "content": [image_block("red"), {"type": "text", "text": "Describe the picture."}]}]
    ) as stream:
        final = stream.get_final_message()
    assert prompt_tokens(final.usage) == prompt_tokens(one.usage)
    # count_tokens takes the image too (the template's count: near the run's, not exact).
    counted = claude.messages.count_tokens(model=VISION, messages=[
        {"role": "user", "content": [image_block("red"), {"type": "text", "text": "Describe the picture."}]}])
    assert counted.input_tokens > prompt_tokens(plain.usage)


def test_anthropic_image_errors(claude: anthropic.Anthropic) -> None:
    def refused(model: str, block: dict) -> anthropic.BadRequestError:
        with pytest.raises(anthropic.BadRequestError) as info:
            claude.messages.create(model=model, max_tokens=1, messages=[{"role": "user", "content": [
                {"type": "text", "text": "hi"}, block]}])
        assert info.value.body["type"] == "error"
        assert info.value.body["error"]["type"] == "invalid_request_error"
        return info.value

    assert f"'{PLAIN}' does not take images" in refused(PLAIN, image_block("red")).message
    bad = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "%%%"}}
    assert "messages.0.content.1: the image data is not valid base64" in refused(VISION, bad).message
    remote = {"type": "image", "source": {"type": "url", "url": "http://127.0.0.1:9/cat.png"}}
    assert "ALLOW_REMOTE_IMAGES is off" in refused(VISION, remote).message
    assert claude.messages.create(model=VISION, max_tokens=1, messages=[
        {"role": "user", "content": [image_block("red")]}]).usage.output_tokens >= 0


# OpenAI Responses --------------------------------------------------------------


@pytest.fixture
def responses_client(vision_server: LokalServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{vision_server.base}/v1", api_key="x", max_retries=0, timeout=120)


def input_image(url: str) -> dict:
    return {"type": "input_image", "image_url": url, "detail": "auto"}


def respond(client: openai.OpenAI, *parts: dict, model: str = VISION) -> openai.types.responses.Response:
    content = [{"type": "input_text", "text": "Describe the picture."}, *parts]
    return client.responses.create(model=model, max_output_tokens=1, temperature=0,
                                   input=[{"role": "user", "content": content}])


def test_responses_input_images_reach_the_model(responses_client: openai.OpenAI) -> None:
    plain = respond(responses_client)
    one = respond(responses_client, input_image(image("red")))
    two = respond(responses_client, input_image(image("red")), input_image(image("noise")))
    per_image = one.usage.input_tokens - plain.usage.input_tokens
    assert per_image >= tiny_vision.IMAGE_TOKENS
    assert two.usage.input_tokens - one.usage.input_tokens == per_image


def test_responses_image_errors(responses_client: openai.OpenAI) -> None:
    def refused(*parts: dict, model: str = VISION) -> openai.BadRequestError:
        with pytest.raises(openai.BadRequestError) as info:
            respond(responses_client, *parts, model=model)
        return info.value

    error = refused(input_image(image("red")), model=PLAIN)
    assert f"'{PLAIN}' does not take images" in error.message
    error = refused(input_image("data:image/png;base64,%%%"))
    assert "not valid base64" in error.message and error.body["param"] == "input.0.content.1"
    error = refused(input_image("http://127.0.0.1:9/cat.png"))
    assert "ALLOW_REMOTE_IMAGES is off" in error.message and error.body["param"] == "input.0.content.1"
    error = refused({"type": "input_image", "file_id": "file-123", "detail": "auto"})
    assert "stores no files" in error.message and error.body["param"] == "input.0.content.1"
    assert respond(responses_client, input_image(image("red"))).status in ("completed", "incomplete")
