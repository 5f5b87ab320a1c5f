"""POST /v1/images/generations and /v1/images/edits: OpenAI's images API on image models.

(`lokal.api.images` is something else: decoding images that chat messages carry.)

Generations take JSON: `model`, `prompt` (LocalAI's `positive|negative` split, or a
`negative_prompt` field), `n`, `size` (`WxH` or `auto`), `response_format` (`url`, LocalAI's
and dall-e's default, or `b64_json`), `output_format` (png, jpeg, webp) and
`output_compression`, `seed`, `step` (LocalAI's denoising steps), `stream` with
`partial_images`; `quality`, `style`, `moderation`, `user` are accepted and change nothing.
Edits take the same as multipart form fields plus the `image` file (`image[]` with one
file too), an optional `mask` (transparent pixels are repainted, as OpenAI's; a mask
without alpha is diffusers' white-is-repainted) and `strength`.

`url` answers point at `/generated-images/NAME` (`lokal.api.generated_images`). With
`stream: true` the answer is Server-Sent Events as OpenAI's newer images API streams
them: `image_generation.partial_image` (previews, `partial_images` of them per image) and
`image_generation.completed` per image (`image_edit.*` for edits), plus lokal's
`image_generation.progress` after every denoising step (`step`, `steps`,
`image_index`), which the openai SDK passes through as an event of that type.

`ImagesRenderer` is the family's `api.respond.Renderer` for image events; the routes
answer through `respond` like every generating route.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Callable
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.datastructures import UploadFile

from lokal.api.errors import APIError, openai_envelope
from lokal.api.generated_images import PREFIX, store
from lokal.api.respond import SSE_COMMENT, respond, sse
from lokal.errors import BadRequest, LokalError
from lokal.models import imaging
from lokal.tasks import ImageTask

router = APIRouter()

MAX_PROMPT_CHARS = 4000  # dall-e-3's; a CLIP text encoder reads its first 77 tokens
MAX_STEPS = 150
MAX_INPUT_SIDE = 8192  # an edit's input image, before it is scaled to the asked size
_SIZE = re.compile(r"^\s*(\d{1,5})\s*[xX×]\s*(\d{1,5})\s*$")


class ImageGenerationRequest(BaseModel):
    """`POST /v1/images/generations` (and the fields an edit shares)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, protected_namespaces=())

    model: str | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    n: int | None = Field(None, ge=1)
    size: str | None = None
    response_format: Literal["url", "b64_json"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    output_compression: int | None = Field(None, ge=0, le=100)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    step: int | None = Field(None, ge=1, le=MAX_STEPS)
    quality: Literal["standard", "hd", "low", "medium", "high", "auto"] | None = None
    style: Literal["vivid", "natural"] | None = None
    background: Literal["transparent", "opaque", "auto"] | None = None
    moderation: Literal["low", "auto"] | None = None
    partial_images: int | None = Field(None, ge=0, le=3)
    stream: bool = False
    user: str | None = None

    @field_validator("model", "prompt", "negative_prompt", "size")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("strings may not contain lone UTF-16 surrogates") from None
        return value


class ImageEditRequest(ImageGenerationRequest):
    strength: float | None = Field(None, gt=0, le=1)


def _size(value: str | None) -> tuple[int | None, int | None]:
    if value is None or value.strip().lower() in ("", "auto"):
        return None, None
    match = _SIZE.match(value)
    if match is None:
        raise BadRequest(f"Invalid value for 'size': {value!r}; give WIDTHxHEIGHT in pixels (e.g. "
                         "512x512) or auto.", param="size")
    width, height = int(match.group(1)), int(match.group(2))
    if width < 1 or height < 1:
        raise BadRequest(f"Invalid size {value!r}: width and height must be positive.", param="size")
    return width, height


def _prompts(body: ImageGenerationRequest) -> tuple[str, str | None]:
    """The prompt and negative prompt: LocalAI's `positive|negative`, or the field."""
    prompt = body.prompt
    if prompt is None:
        raise BadRequest("Missing required parameter: 'prompt'.", param="prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise BadRequest(f"The prompt is {len(prompt)} characters long; the most is {MAX_PROMPT_CHARS}.",
                         param="prompt")
    negative = body.negative_prompt
    if "|" in prompt:
        prompt, split = prompt.split("|", 1)
        if negative is not None and negative.strip():
            raise BadRequest("The prompt has a negative part after '|' and negative_prompt is set too: "
                             "give the negative prompt once.", param="negative_prompt")
        negative = split
    if not prompt.strip():
        raise BadRequest("The prompt is empty: describe the image to make.", param="prompt")
    if negative is not None and len(negative) > MAX_PROMPT_CHARS:
        raise BadRequest(f"The negative prompt is longer than {MAX_PROMPT_CHARS} characters.",
                         param="negative_prompt")
    return prompt.strip(), (negative.strip() or None) if negative is not None else None


def to_task(body: ImageGenerationRequest, request: Request, task: Literal["image", "image_edit"]) -> ImageTask:
    """The task a request asks for; BadRequest (400, with the parameter) for what is wrong
    whatever the model (sizes and masks are checked against the model later)."""
    settings = request.app.state.settings
    if body.model is None or not body.model.strip():
        raise BadRequest("Missing required parameter: 'model' (an image model; GET /v1/models "
                         "lists them, those with the capability 'image').", param="model")
    prompt, negative = _prompts(body)
    n = body.n if body.n is not None else 1
    if n > settings.image_max_n:
        raise BadRequest(f"n={n} asks for more images than one request may make ({settings.image_max_n}, "
                         "IMAGE_MAX_N).", param="n")
    width, height = _size(body.size)
    if body.background == "transparent":
        raise BadRequest("Transparent backgrounds are not supported: diffusion models make opaque "
                         "images. Use background opaque or auto.", param="background")
    return ImageTask(model=body.model.strip(), prompt=prompt, negative_prompt=negative, n=n, width=width,
                     height=height, steps=body.step, seed=body.seed, output_format=body.output_format or "png",
                     compression=body.output_compression, partial_images=body.partial_images or 0,
                     stream=body.stream, task=task,
                     strength=getattr(body, "strength", None))


# The renderer --------------------------------------------------------------------------


class ImagesRenderer:
    """Image events (from the engine) into OpenAI's images answer, streamed or whole."""

    media_type = "text/event-stream"

    def __init__(self, *, kind: Literal["image_generation", "image_edit"], response_format: str,
                 output_format: str, quality: str | None, size: tuple[int, int],
                 publish: Callable[[bytes, str], str], usage: Callable[[], imaging.ImageUsage]) -> None:
        self.kind = kind
        self.response_format = response_format
        self.output_format = output_format
        self.quality = quality if quality in ("low", "medium", "high") else "auto"
        self.size = f"{size[0]}x{size[1]}"
        self.publish = publish
        self.usage = usage
        self.created = int(time.time())

    def _common(self) -> dict[str, Any]:
        return {"created_at": int(time.time()), "background": "opaque", "output_format": self.output_format,
                "quality": self.quality, "size": self.size}

    def start(self) -> bytes:
        return b""

    def feed(self, items: list[dict[str, Any]]) -> bytes:
        out = []
        for event in items:
            kind = event.get("event")
            if kind == "step":
                out.append(sse({"type": f"{self.kind}.progress", "image_index": event["image"],
                                "step": event["step"], "steps": event["steps"], "created_at": int(time.time())},
                               event=f"{self.kind}.progress"))
            elif kind == "partial":
                out.append(sse({"type": f"{self.kind}.partial_image", **self._common(),
                                "b64_json": base64.b64encode(event["data"]).decode("ascii"),
                                "partial_image_index": event["index"], "image_index": event["image"]},
                               event=f"{self.kind}.partial_image"))
            elif kind == "image":
                completed = {"type": f"{self.kind}.completed", **self._common(),
                             "b64_json": base64.b64encode(event["data"]).decode("ascii"),
                             "image_index": event["image"], "usage": self.usage().as_openai()}
                if self.response_format == "url":
                    completed["url"] = self.publish(event["data"], self.output_format)
                out.append(sse(completed, event=f"{self.kind}.completed"))
        return b"".join(out)

    def keepalive(self) -> bytes:
        return SSE_COMMENT

    def end(self, usage: imaging.ImageUsage) -> bytes:
        return b""

    def fail(self, err: LokalError) -> bytes:
        return sse({"type": "error", **openai_envelope(err)}, event="error")

    def whole(self, items: list[dict[str, Any]], usage: imaging.ImageUsage) -> Response:
        images = sorted((e for e in items if e.get("event") == "image"), key=lambda e: e["image"])
        data = []
        for event in images:
            if self.response_format == "url":
                data.append({"url": self.publish(event["data"], self.output_format)})
            else:
                data.append({"b64_json": base64.b64encode(event["data"]).decode("ascii")})
        return JSONResponse({"created": self.created, "data": data, "background": "opaque",
                             "output_format": self.output_format, "quality": self.quality,
                             "size": self.size, "usage": usage.as_openai()})


# Running a task --------------------------------------------------------------------------


async def _watch_disconnect(request: Request, run: imaging.ImageRun) -> None:
    """Stop the run when the client goes away (the body has been read by now)."""
    while not run.cancel.is_set():
        message = await request.receive()
        if message["type"] == "http.disconnect":
            run.stop()
            return


async def _answer(request: Request, task: ImageTask, response_format: str, quality: str | None,
                  kind: Literal["image_generation", "image_edit"]) -> Response:
    app = request.app
    run = await imaging.start(app.state.registry, task, timeout=app.state.settings.request_timeout,
                              stopping=app.state.stopping)
    watcher = asyncio.create_task(_watch_disconnect(request, run))  # a queued client may leave too
    run.on_close(watcher.cancel)
    try:
        await run.begin()
    except BaseException:
        await run.close()
        raise
    images = store(request)
    base = str(request.base_url).rstrip("/")

    def publish(data: bytes, fmt: str) -> str:
        return f"{base}{PREFIX}/{images.save(data, fmt)}"

    renderer = ImagesRenderer(kind=kind, response_format=response_format, output_format=task.output_format,
                              quality=quality, size=(run.job.width, run.job.height), publish=publish,
                              usage=lambda: run.usage)
    return await respond(request, run, renderer, stream=task.stream)


@router.post("/images/generations", summary="Create images from a prompt")
async def create_images(body: ImageGenerationRequest, request: Request) -> Response:
    task = to_task(body, request, "image")
    return await _answer(request, task, body.response_format or "url", body.quality, "image_generation")


# Edits: multipart ------------------------------------------------------------------------

EDIT_USAGE = ("Send multipart/form-data with the image in the field 'image', an optional 'mask', "
              "and 'model' and 'prompt' (as OpenAI's images.edit does).")


async def _file(form: Any, names: tuple[str, ...], what: str, limit: int) -> bytes | None:
    """The bytes of the one uploaded file among form fields names, or None."""
    parts = [item for name in names for item in form.getlist(name)]
    if not parts:
        return None
    if len(parts) > 1:
        raise BadRequest(f"Give one {what}: lokal edits one image per request.", param=what)
    part = parts[0]
    if not isinstance(part, UploadFile):
        raise BadRequest(f"Invalid value for '{what}': it must be an uploaded file (a multipart part "
                         "with a filename), not a text field.", param=what)
    data = await part.read(limit + 1)
    await part.close()
    if not data:
        raise BadRequest(f"The {what} file is empty.", param=what)
    if len(data) > limit:
        raise BadRequest(f"The {what} is larger than MAX_IMAGE_SIZE ({limit} bytes).", param=what)
    return data


def _image_size(data: bytes, what: str) -> tuple[int, int]:
    """Check that data decodes as an image; its width and height."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:  # pragma: no cover - the images extra brings Pillow
        raise APIError(501, "Image edits need Pillow: pip install 'lokal[images]'.") from None
    import io

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if max(width, height) > MAX_INPUT_SIDE:
                raise BadRequest(f"The {what} is {width}x{height}; the largest side lokal takes is "
                                 f"{MAX_INPUT_SIDE} pixels.", param=what)
            image.load()
    except BadRequest:
        raise
    except UnidentifiedImageError:
        raise BadRequest(f"The {what} is not an image file lokal can read; send a PNG, JPEG or WebP "
                         "file.", param=what) from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise BadRequest(f"The {what} cannot be decoded as an image ({exc}); send a PNG, JPEG or WebP "
                         "file.", param=what) from None
    return width, height


@router.post("/images/edits", summary="Edit an image from a prompt (image-to-image, inpainting)")
async def edit_images(request: Request) -> Response:
    if not request.headers.get("content-type", "").startswith("multipart/"):
        raise BadRequest(f"The request body is not multipart/form-data. {EDIT_USAGE}")
    limit = request.app.state.settings.max_image_bytes
    form = await request.form()
    try:
        fields = {key: value for key, value in form.multi_items()
                  if isinstance(value, str) and not key.startswith(("image", "mask"))}
        try:
            body = ImageEditRequest.model_validate(fields)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None
        image = await _file(form, ("image", "image[]"), "image", limit)
        if image is None:
            raise BadRequest(f"Missing required parameter: 'image'. {EDIT_USAGE}", param="image")
        mask = await _file(form, ("mask",), "mask", limit)
    finally:
        await form.close()
    task = to_task(body, request, "image_edit")
    width, height = _image_size(image, "image")
    if mask is not None and _image_size(mask, "mask") != (width, height):
        raise BadRequest("The mask must be the same size as the image.", param="mask")
    task.image, task.mask, task.image_size = image, mask, (width, height)
    return await _answer(request, task, body.response_format or "url", body.quality, "image_edit")
