"""POST /v1/images/generations and /v1/images/edits on a real server with the tiny pipeline,
through the openai SDK and plain HTTP: images, URLs, streams, cancellation, queueing, errors."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LokalServer
from tests.images.conftest import MAX_N, MAX_SIDE, image_models

GENERATE = "/v1/images/generations"
EDIT = "/v1/images/edits"


def decode(data: bytes) -> Any:
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def png(size: tuple[int, int] = (64, 64), color: tuple[int, ...] = (200, 30, 30), mode: str = "RGB") -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def http(image_server: LokalServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=image_server.base, timeout=300) as client:
        yield client


@pytest.fixture
def client(image_server: LokalServer):  # noqa: ANN201
    import openai

    return openai.OpenAI(base_url=f"{image_server.base}/v1", api_key="sk-unused", max_retries=0, timeout=300)


def generate(http: httpx.Client, **body: Any) -> list[bytes]:
    body.setdefault("model", "tiny")
    body.setdefault("prompt", "a red cat")
    body.setdefault("size", "64x64")
    body.setdefault("response_format", "b64_json")
    response = http.post(GENERATE, json=body)
    assert response.status_code == 200, response.text
    return [base64.b64decode(d["b64_json"]) for d in response.json()["data"]]


# Images ------------------------------------------------------------------------------


def test_the_openai_sdk_generates_n_images_of_the_asked_size_with_usage(client: Any) -> None:
    result = client.images.generate(model="tiny", prompt="a red cat", size="64x48", n=2,
                                    response_format="b64_json", extra_body={"seed": 3})
    assert len(result.data) == 2
    pictures = [decode(base64.b64decode(d.b64_json)) for d in result.data]
    assert all(p.format == "PNG" and p.size == (64, 48) for p in pictures)
    assert result.size == "64x48" and result.output_format == "png"
    usage = result.usage
    assert usage.input_tokens_details.text_tokens == usage.input_tokens > 0
    assert usage.output_tokens == 2 * (4 * 3)  # one token per 16x16 patch
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


@pytest.mark.parametrize("fmt,pil", [("jpeg", "JPEG"), ("webp", "WEBP")])
def test_output_formats(client: Any, fmt: str, pil: str) -> None:
    result = client.images.generate(model="tiny", prompt="a cat", size="32x64", output_format=fmt,
                                    output_compression=70, response_format="b64_json")
    picture = decode(base64.b64decode(result.data[0].b64_json))
    assert picture.format == pil and picture.size == (32, 64) and result.output_format == fmt


def test_seeds_decide_the_bytes_and_a_single_file_is_the_same_model(http: httpx.Client) -> None:
    first = generate(http, seed=42)
    assert generate(http, seed=42) == first
    assert generate(http, seed=43) != first
    assert generate(http, seed=42, model="single") == first  # the checkpoint holds the same weights
    assert generate(http, prompt="a red cat|blurry", seed=42) != first  # the negative prompt counts
    assert generate(http, prompt="a red cat", negative_prompt="blurry", seed=42) == \
        generate(http, prompt="a red cat|blurry", seed=42)


def test_url_answers_point_at_generated_images_served_by_lokal(http: httpx.Client, image_server: LokalServer) -> None:
    body = {"model": "tiny", "prompt": "a red cat", "size": "64x64", "seed": 9, "n": 2}
    answer = http.post(GENERATE, json=body).json()  # url is the default, as LocalAI and dall-e
    urls = [d["url"] for d in answer["data"]]
    assert len(set(urls)) == 2
    for url in urls:
        assert re.fullmatch(re.escape(image_server.base) + r"/generated-images/[A-Za-z0-9_-]{43}\.png", url)
    fetched = httpx.get(urls[0], timeout=30)
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
    assert fetched.content == generate(http, **{k: v for k, v in body.items() if k != "n"})[0]
    missing = httpx.get(f"{image_server.base}/generated-images/{'A' * 43}.png", timeout=30)
    assert missing.status_code == 404


def test_requests_beyond_the_slot_queue_and_all_finish(http: httpx.Client) -> None:
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda seed: generate(http, seed=seed), [1, 2, 3]))
    assert [len(r) for r in results] == [1, 1, 1] and len({r[0] for r in results}) == 3


# Edits -------------------------------------------------------------------------------


def test_the_openai_sdk_edits_an_image_and_inpaints_under_a_mask(client: Any) -> None:
    from PIL import Image, ImageChops, ImageStat

    source = png((64, 64))
    result = client.images.edit(model="tiny", image=("in.png", source, "image/png"), prompt="a cat",
                                response_format="b64_json", extra_body={"seed": 4, "strength": 0.9})
    edited = decode(base64.b64decode(result.data[0].b64_json)).convert("RGB")
    original = decode(source).convert("RGB")
    assert edited.size == (64, 64)
    assert sum(ImageStat.Stat(ImageChops.difference(edited, original)).mean) > 30
    assert result.usage.input_tokens_details.image_tokens == 16
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 32, 64))  # the left half is repainted
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    result = client.images.edit(model="single", image=("in.png", source, "image/png"),
                                mask=("mask.png", buffer.getvalue(), "image/png"), prompt="a cat",
                                size="64x64", response_format="b64_json", extra_body={"seed": 4})
    inpainted = decode(base64.b64decode(result.data[0].b64_json)).convert("RGB")
    left = ImageStat.Stat(ImageChops.difference(inpainted.crop((0, 0, 32, 64)), original.crop((0, 0, 32, 64))))
    right = ImageStat.Stat(ImageChops.difference(inpainted.crop((32, 0, 64, 64)), original.crop((32, 0, 64, 64))))
    assert sum(left.mean) > 30 and sum(right.mean) == 0


def test_an_edit_without_a_size_keeps_the_images_shape_within_the_largest_side(http: httpx.Client) -> None:
    files = {"image": ("wide.png", png((400, 100)), "image/png")}
    answer = http.post(EDIT, data={"model": "tiny", "prompt": "a cat", "response_format": "b64_json"},
                       files=files)
    assert answer.status_code == 200, answer.text
    picture = decode(base64.b64decode(answer.json()["data"][0]["b64_json"]))
    assert picture.size == (MAX_SIDE, 32)  # scaled to fit 128, in multiples of 8


# Streams -----------------------------------------------------------------------------


def test_a_stream_reports_every_step_previews_and_the_images(client: Any) -> None:
    events = list(client.images.generate(model="tiny", prompt="a cat", size="64x64", n=2, stream=True,
                                         partial_images=1, extra_body={"seed": 5, "step": 4}))
    kinds = [e.type for e in events]
    progress = [e for e in events if e.type == "image_generation.progress"]
    steps = progress[0].steps  # type: ignore[attr-defined]
    assert [(e.image_index, e.step) for e in progress] == [  # type: ignore[attr-defined]
        (i, s) for i in range(2) for s in range(1, steps + 1)]
    partials = [e for e in events if e.type == "image_generation.partial_image"]
    assert len(partials) == 2 and all(p.partial_image_index == 0 for p in partials)
    completed = [e for e in events if e.type == "image_generation.completed"]
    assert len(completed) == 2 and kinds[-1] == "image_generation.completed"
    for event in partials + completed:
        assert decode(base64.b64decode(event.b64_json)).size == (64, 64)
        assert event.size == "64x64" and event.output_format == "png"
    assert completed[-1].usage.output_tokens == 2 * 16
    edits = list(client.images.edit(model="tiny", image=("in.png", png(), "image/png"), prompt="a cat",
                                    stream=True, extra_body={"seed": 5}))
    assert edits[-1].type == "image_edit.completed"
    assert {e.type for e in edits} == {"image_edit.progress", "image_edit.completed"}


def test_a_client_that_leaves_stops_the_engine_before_its_last_step(http: httpx.Client,
                                                                     image_server: LokalServer) -> None:
    body = {"model": "tiny", "prompt": "a cat", "size": "64x64", "step": 120, "stream": True}
    with http.stream("POST", GENERATE, json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data:"):
                first = json.loads(line[5:])
                break
    assert first["type"] == "image_generation.progress"
    log = image_server.wait_log("image generation stopped at step", timeout=120)
    stopped = int(re.findall(r"image generation stopped at step (\d+) of image 1", log)[-1])
    assert stopped < first["steps"]
    assert generate(http, seed=1)  # the slot is free again


# Errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("change,param", [
    ({"prompt": ""}, "prompt"),
    ({"prompt": "   "}, "prompt"),
    ({"prompt": "x" * 4001}, "prompt"),
    ({"prompt": None}, "prompt"),
    ({"size": f"{MAX_SIDE + 8}x64"}, "size"),
    ({"size": "65x64"}, "size"),
    ({"size": "0x64"}, "size"),
    ({"size": "big"}, "size"),
    ({"n": MAX_N + 1}, "n"),
    ({"n": 0}, "n"),
    ({"step": 0}, "step"),
    ({"step": 151}, "step"),
    ({"output_format": "gif"}, "output_format"),
    ({"response_format": "file"}, "response_format"),
    ({"background": "transparent"}, "background"),
    ({"prompt": "a|b", "negative_prompt": "c"}, "negative_prompt"),
    ({"model": ""}, "model"),
])
def test_bad_generation_requests_are_400_naming_the_parameter(http: httpx.Client, change: dict, param: str) -> None:
    body = {"model": "tiny", "prompt": "a cat", "size": "64x64", **change}
    body = {k: v for k, v in body.items() if v is not None}
    answer = http.post(GENERATE, json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


def test_models_that_make_no_images_or_no_edits_say_what_they_serve(http: httpx.Client) -> None:
    answer = http.post(GENERATE, json={"model": "smol", "prompt": "a cat"})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] == "model" and "does not support image generation" in error["message"]
    assert "It serves: chat, complete." in error["message"]
    answer = http.post(EDIT, data={"model": "text-only", "prompt": "a cat"}, files={"image": ("a.png", png())})
    assert answer.status_code == 400 and "Stable Diffusion" in answer.json()["error"]["message"]
    assert http.post(GENERATE, json={"model": "nope", "prompt": "a cat"}).status_code == 404
    capabilities = {m["id"]: m["capabilities"] for m in http.get("/v1/models").json()["data"]}
    assert capabilities["tiny"] == ["image", "image_edit"] and capabilities["text-only"] == ["image"]


@pytest.mark.parametrize("files,data,param", [
    ({"image": ("a.png", b"not an image", "image/png")}, {}, "image"),
    ({"image": ("a.png", b"", "image/png")}, {}, "image"),
    ({}, {}, "image"),
    ({"image": ("a.png", png((64, 64)))}, {"image[]": "text"}, None),
    ({"image": ("a.png", png((64, 64))), "mask": ("m.png", png((32, 32)))}, {}, "mask"),
    ({"image": ("a.png", png((64, 64))), "mask": ("m.png", b"garbage")}, {}, "mask"),
    ({"image": ("a.png", png((64, 64)))}, {"strength": "2"}, "strength"),
    ({"image": ("a.png", png((64, 64)))}, {"n": "many"}, "n"),
])
def test_bad_edits_are_400(http: httpx.Client, files: dict, data: dict, param: str | None) -> None:
    form = {"model": "tiny", "prompt": "a cat", **data}
    answer = http.post(EDIT, data=form, files=files or {"unused": ("x.txt", b"x")})
    assert answer.status_code == 400, answer.text
    if param is not None:
        assert answer.json()["error"]["param"] == param
    assert http.post(EDIT, json={"model": "tiny", "prompt": "a cat"}).status_code == 400


# Limits: one slot, no queue, an API key, few images kept -----------------------------------


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory, tiny_sd: Path) -> Iterator[LokalServer]:
    models = image_models(tmp_path_factory.mktemp("strict") / "models", tiny_sd, "tiny")
    with LokalServer(models, "--parallel-requests", "1", "--queue-size", "0", "--generated-images-keep", "2",
                     "--image-max-side", str(MAX_SIDE), "--preload-models", "tiny",
                     env={"API_KEY": "sk-right"}) as server:
        server.wait_ready(timeout=300)
        yield server


def test_beyond_the_slot_and_queue_a_request_gets_429(strict: LokalServer) -> None:
    key = {"Authorization": "Bearer sk-right"}
    body = {"model": "tiny", "prompt": "a cat", "size": "64x64", "step": 120, "stream": True}
    with httpx.Client(base_url=strict.base, timeout=300, headers=key) as http:
        with http.stream("POST", GENERATE, json=body) as running:
            for line in running.iter_lines():
                if line.startswith("data:"):
                    break
            refused = http.post(GENERATE, json={"model": "tiny", "prompt": "a cat", "size": "64x64"})
            assert refused.status_code == 429 and refused.headers["retry-after"]
            assert refused.json()["error"]["type"] == "rate_limit_error"
        strict.wait_log("image generation stopped at step", timeout=120)


def test_urls_need_no_key_and_only_the_newest_are_kept(strict: LokalServer) -> None:
    key = {"Authorization": "Bearer sk-right"}
    body = {"model": "tiny", "prompt": "a cat", "size": "64x64"}
    assert httpx.post(f"{strict.base}{GENERATE}", json=body, timeout=60).status_code == 401
    urls = []
    for seed in range(3):
        answer = httpx.post(f"{strict.base}{GENERATE}", json=dict(body, seed=seed), headers=key, timeout=300)
        assert answer.status_code == 200, answer.text
        urls.append(answer.json()["data"][0]["url"])
    assert [httpx.get(url, timeout=30).status_code for url in urls] == [404, 200, 200]

