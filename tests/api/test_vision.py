"""Image input on the real engine: SmolLM2 with a tiny random projector made by the tests.

The projector (tests/fixtures/tiny_vision.py) is built once per session with
transformers and llama.cpp's converter. Its answers are nonsense, but the path is
real: the image is decoded and encoded by the engine, its tokens are in the prompt
(and in the usage), and different images lead the greedy answer apart.
"""

from __future__ import annotations

import base64
import io
import random

import httpx
import openai
import pytest

from tests.api.conftest import PLAIN
from tests.api.conftest import VISION as MODEL
from tests.conftest import LokalServer
from tests.fixtures import tiny_vision


@pytest.fixture
def client(vision_server: LokalServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{vision_server.base}/v1", api_key="x", max_retries=0, timeout=120)


def image(kind: str) -> str:
    """A data URI of a small PNG: a solid colour or seeded noise."""
    pil = pytest.importorskip("PIL.Image")
    if kind == "noise":
        rng = random.Random(1)
        picture = pil.frombytes("RGB", (64, 64), bytes(rng.randrange(256) for _ in range(64 * 64 * 3)))
    else:
        picture = pil.new("RGB", (48, 32), kind)
    out = io.BytesIO()
    picture.save(out, "PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def ask(client: openai.OpenAI, *urls: str, text: str = "Describe the picture.", **kwargs):  # noqa: ANN201
    content = [{"type": "text", "text": text}] + [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}],
                                          max_tokens=kwargs.pop("max_tokens", 4), temperature=0, **kwargs)


def test_models_list_marks_the_vision_model(client: openai.OpenAI, vision_server: LokalServer) -> None:
    models = httpx.get(f"{vision_server.base}/v1/models").json()["data"]
    assert sorted((m["id"], m["capabilities"]) for m in models) == [
        (MODEL, ["chat", "complete", "vision"]), (PLAIN, ["chat", "complete"])]
    assert sorted(m.id for m in client.models.list().data) == [MODEL, PLAIN]  # the SDK still reads it


def test_an_image_adds_its_tokens_to_the_prompt(client: openai.OpenAI) -> None:
    plain = ask(client)
    one = ask(client, image("red"))
    two = ask(client, image("red"), image("noise"))
    per_image = one.usage.prompt_tokens - plain.usage.prompt_tokens
    # The projector's 16 image tokens, plus the text the engine frames them with.
    assert per_image >= tiny_vision.IMAGE_TOKENS
    assert two.usage.prompt_tokens - one.usage.prompt_tokens == per_image
    assert one.choices[0].message.content


def test_different_images_give_different_greedy_answers(client: openai.OpenAI) -> None:
    red = ask(client, image("red"), max_tokens=6).choices[0].message.content
    noise = ask(client, image("noise"), max_tokens=6).choices[0].message.content
    again = ask(client, image("red"), max_tokens=6).choices[0].message.content
    assert red == again  # greedy: the same image, the same answer
    assert red != noise


def test_streaming_with_an_image(client: openai.OpenAI) -> None:
    stream = ask(client, image("noise"), stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ask(client, image("noise")).choices[0].message.content
    assert chunks[-1].usage.prompt_tokens > tiny_vision.IMAGE_TOKENS


def test_bad_images_are_400_and_the_server_keeps_serving(client: openai.OpenAI) -> None:
    for url, words in (("data:image/png;base64,!!!", "not valid base64"),
                       ("data:image/png;base64," + base64.b64encode(b"plain text").decode(), "not an image"),
                       ("http://127.0.0.1:9/x.png", "ALLOW_REMOTE_IMAGES is off")):
        with pytest.raises(openai.BadRequestError) as caught:
            ask(client, url)
        assert words in caught.value.message
        assert caught.value.body["param"] == "messages.0.content.1"
    assert ask(client, image("red")).choices[0].message.content


def test_a_corrupt_png_is_the_engines_400(client: openai.OpenAI) -> None:
    """Passes lokal's header checks (magic, IHDR) but does not decode: the engine says so."""
    data = base64.b64decode(image("red").split(",", 1)[1])
    broken = data[:40] + b"\x00" * 30  # IHDR intact, the pixel data destroyed
    with pytest.raises(openai.BadRequestError):
        ask(client, "data:image/png;base64," + base64.b64encode(broken).decode())
    assert ask(client, image("red")).choices[0].message.content


def test_image_to_a_text_model_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=PLAIN, max_tokens=2, messages=[{"role": "user", "content": [
            {"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": image("red")}}]}])
    assert f"'{PLAIN}' does not take images" in caught.value.message
    assert caught.value.body["param"] == "messages"
