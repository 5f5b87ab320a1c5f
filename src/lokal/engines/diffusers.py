"""Image generation through Hugging Face diffusers (torch, on the CPU).

An optional extra: `pip install 'lokal[images]'`. Without it, an image model fails to
load with a message naming the extra. A model is a diffusers folder (`model_index.json`
and its parts) or a single-file `.safetensors` checkpoint with the configs of its
pipeline (`lokal.formats.diffusion` tells which, and what it can do).

One pipeline is loaded; image-to-image and inpainting pipelines are made from it on
first use (`AutoPipelineFor*.from_pipe`: the same weights, no second copy). Images are
made one at a time, each with its own seeded generator (image k of a request uses
seed + k, so the same request gives the same bytes), step by step: after every step the
progress sink hears of it and may stop the work, which ends before the next step (no
VAE decode of a half-made image). An inpainted image keeps the input's pixels wherever the
mask does not cover (the VAE's round trip would change them). Previews (OpenAI's partial images) are the latents
decoded at evenly spaced steps. Images are encoded here, in the engine's process.
"""

from __future__ import annotations

import inspect
import io
import logging
import threading
import time
from typing import Any

from lokal.engines.base import (Engine, EngineError, ImageJob, ImageResult, LoadOptions, ModelLoadError,
                                ProgressSink)

log = logging.getLogger(__name__)

EXTRA_HINT = ("image models need the diffusers engine: pip install 'lokal[images]' "
              "(diffusers, transformers, torch)")


class _Stopped(Exception):
    """Raised from the step callback: the sink asked to stop."""

    def __init__(self, image: int, step: int) -> None:
        super().__init__(f"stopped at step {step} of image {image}")
        self.image = image
        self.step = step


def encode(image: Any, fmt: str, quality: int | None) -> bytes:
    """A Pillow image as PNG, JPEG or WebP bytes (the same image, the same bytes)."""
    buffer = io.BytesIO()
    if fmt == "png":
        image.save(buffer, format="PNG")
    elif fmt == "jpeg":
        image.convert("RGB").save(buffer, format="JPEG", quality=90 if quality is None else quality)
    elif fmt == "webp":
        image.save(buffer, format="WEBP", quality=90 if quality is None else quality)
    else:
        raise EngineError(400, f"unknown output format {fmt!r} (png, jpeg or webp)")
    return buffer.getvalue()


def open_image(data: bytes, what: str) -> Any:
    """A Pillow image from bytes, decoded whole (an EngineError 400 when it cannot be)."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except UnidentifiedImageError:
        raise EngineError(400, f"the {what} is not an image file Pillow can read") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise EngineError(400, f"the {what} cannot be decoded as an image: {exc}") from exc
    return image


def mask_of(image: Any) -> Any:
    """The repaint mask of a mask image: OpenAI's (transparent pixels are edited) when it
    has an alpha channel, else diffusers' (white is repainted)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        alpha = image.convert("RGBA").getchannel("A")
        return alpha.point(lambda a: 255 if a == 0 else 0).convert("L")
    return image.convert("L")


class DiffusersEngine(Engine):
    """One diffusion pipeline, making one image at a time."""

    slots = 1  # torch uses every thread it was given for one image

    def __init__(self, options: LoadOptions) -> None:
        if options.diffusion is None:
            raise ModelLoadError(f"{options.model_path.name}: no image model options (a planner bug)")
        try:
            import transformers
            # Before diffusers imports its pipelines: their notes on optional packages
            # (torchvision) and the progress bars of loading are not the server's log.
            transformers.utils.logging.set_verbosity_error()
            transformers.utils.logging.disable_progress_bar()
            import diffusers
            import torch
        except ImportError as exc:
            raise ModelLoadError(f"{options.model_path.name}: {EXTRA_HINT} ({exc})") from exc
        diffusers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.disable_progress_bar()
        torch.set_num_threads(options.threads)
        self.options = options
        self.spec = options.diffusion
        self._torch = torch
        started = time.monotonic()
        try:
            self._base = self._load(diffusers, torch)
        except ModelLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - any loader failure is the user's to read
            raise ModelLoadError(f"{options.model_path.name} failed to load: {type(exc).__name__}: {exc}") from exc
        self._base.set_progress_bar_config(disable=True)
        self._pipes: dict[str, Any] = {}
        self._lock = threading.Lock()
        log.info("loaded %s (diffusers %s, %s) in %.1fs", options.model_path.name,
                 type(self._base).__name__, type(self._base.scheduler).__name__, time.monotonic() - started)

    def _load(self, diffusers: Any, torch: Any) -> Any:
        spec, info, path = self.spec, self.spec.info, self.options.model_path
        if self.options.f16:
            log.info("%s: f16 is for GPUs; on the CPU the weights run as float32", path.name)
        name = spec.pipeline or info.pipeline
        kwargs: dict[str, Any] = {"dtype": torch.float32}
        if info.layout == "single-file":
            cls = self._class(diffusers, name)
            if spec.config_folder is not None:
                kwargs["config"] = str(spec.config_folder)
            try:
                pipe = cls.from_single_file(str(path), local_files_only=True, **kwargs)
            except (OSError, EnvironmentError) as exc:
                raise ModelLoadError(
                    f"{path.name} failed to load: {exc}. A single-file checkpoint holds weights only: "
                    "name a diffusers folder with its pipeline's configs and tokenizer in "
                    "diffusers.pipeline_config (lokal fetches nothing while loading)") from exc
        else:
            cls = self._class(diffusers, spec.pipeline) if spec.pipeline else diffusers.DiffusionPipeline
            for part in info.missing:  # optional parts (a safety checker) left out of the folder
                kwargs[part] = None
                if part == "safety_checker":
                    kwargs["requires_safety_checker"] = False
            if info.variant:
                kwargs["variant"] = info.variant
            pipe = cls.from_pretrained(str(path), local_files_only=True, **kwargs)
        if spec.scheduler is not None:
            scheduler_name, extra = spec.scheduler
            scheduler = getattr(diffusers, scheduler_name)
            pipe.scheduler = scheduler.from_config(pipe.scheduler.config, **extra)
        return pipe

    @staticmethod
    def _class(diffusers: Any, name: str | None) -> Any:
        cls = getattr(diffusers, name or "", None)
        if cls is None or not isinstance(cls, type) or not issubclass(cls, diffusers.DiffusionPipeline):
            raise ModelLoadError(f"diffusers {diffusers.__version__} has no pipeline class {name!r} "
                                 "(diffusers.pipeline_type)")
        return cls

    # Pipelines for each kind of work ---------------------------------------------------

    def _pipe(self, kind: str) -> Any:
        """The base pipeline as text-to-image, image-to-image or inpainting."""
        if kind in self._pipes:
            return self._pipes[kind]
        import diffusers

        auto = {"text": diffusers.AutoPipelineForText2Image, "image": diffusers.AutoPipelineForImage2Image,
                "inpaint": diffusers.AutoPipelineForInpainting}[kind]
        base = self._base
        wanted = {"text": "Img2Img" not in type(base).__name__ and "Inpaint" not in type(base).__name__,
                  "image": "Img2Img" in type(base).__name__, "inpaint": "Inpaint" in type(base).__name__}
        if wanted[kind]:
            pipe = base
        else:
            try:
                pipe = auto.from_pipe(base)
            except ValueError as exc:
                what = {"text": "text-to-image", "image": "image-to-image", "inpaint": "inpainting"}[kind]
                raise EngineError(400, f"{type(base).__name__} has no {what} pipeline in diffusers: {exc}") from exc
            pipe.set_progress_bar_config(disable=True)
        self._pipes[kind] = pipe
        return pipe

    # Generation ------------------------------------------------------------------------

    def generate_image(self, job: ImageJob, sink: ProgressSink) -> ImageResult:
        kind = "inpaint" if job.mask is not None else "image" if job.image is not None else "text"
        init = mask = None
        if job.image is not None:  # decoded before the lock: a bad file fails at once
            init = open_image(job.image, "image").convert("RGB")
            if init.size != (job.width, job.height):
                init = init.resize((job.width, job.height), resample=_lanczos())
            if job.mask is not None:
                mask = mask_of(open_image(job.mask, "mask"))
                if mask.size != (job.width, job.height):
                    mask = mask.resize((job.width, job.height), resample=0)  # nearest: a mask stays a mask
        with self._lock:
            pipe = self._pipe(kind)
            kwargs, tokens = self._arguments(pipe, job, kind, init, mask)
            steps = kwargs.get("num_inference_steps") or _default(pipe, "num_inference_steps") or 0
            if sink({"event": "start", "prompt_tokens": tokens, "steps": steps, "images": job.n}):
                return ImageResult(0, tokens, (0, 0))
            started = time.monotonic()
            done = 0
            try:
                for index in range(job.n):
                    image = self._one(pipe, kwargs, job, index, sink)
                    if mask is not None:  # what the mask does not cover stays the input's, pixel for pixel
                        image = _composite(image, init, mask)
                    data = encode(image, job.output_format, job.compression)
                    done += 1
                    if sink({"event": "image", "image": index, "data": data, "seed": job.seed + index,
                             "width": image.width, "height": image.height}):
                        raise _Stopped(index, steps)
            except ValueError as exc:  # diffusers checks its inputs with ValueError (steps left by a strength ...)
                raise EngineError(400, f"{type(pipe).__name__} refused the request: {exc}") from exc
            except _Stopped as stop:
                log.info("image generation stopped at step %d of image %d of %d (the client went away "
                         "or the request ended)", stop.step, stop.image + 1, job.n)
                return ImageResult(done, tokens, (stop.image, stop.step))
            elapsed = time.monotonic() - started
            log.info("made %d image(s) of %dx%d in %.2fs (%d steps each, %.3fs per step)", job.n, job.width,
                     job.height, elapsed, steps, elapsed / max(1, steps * job.n))
            return ImageResult(done, tokens)

    def _arguments(self, pipe: Any, job: ImageJob, kind: str, init: Any, mask: Any) -> tuple[dict[str, Any], int]:
        """The pipeline call's keyword arguments, and the prompt's tokens."""
        accepted = set(inspect.signature(pipe.__call__).parameters)
        enabled = self.spec.enabled
        kwargs: dict[str, Any] = {"prompt": job.prompt}

        def offer(name: str, value: Any, *, refuse: str | None = None) -> None:
            if value is None:
                return
            if enabled is not None and name not in enabled:
                log.info("%s is not passed to the pipeline: the model's enable_parameters leaves it out", name)
                return
            if name not in accepted:
                if refuse is not None:
                    raise EngineError(400, refuse)
                log.info("%s takes no %s; not passed", type(pipe).__name__, name)
                return
            kwargs[name] = value

        offer("negative_prompt", job.negative_prompt,
              refuse=f"{type(pipe).__name__} takes no negative prompt; leave negative_prompt out")
        offer("num_inference_steps", job.steps or self.spec.steps)
        offer("guidance_scale", job.guidance if job.guidance is not None else self.spec.guidance)
        offer("clip_skip", self.spec.clip_skip)
        if kind in ("image", "inpaint"):
            kwargs["image"] = init
            offer("strength", job.strength)
        if kind == "inpaint":
            kwargs["mask_image"] = mask
        if kind != "image":
            kwargs["height"], kwargs["width"] = job.height, job.width
        if "num_images_per_prompt" in accepted:
            kwargs["num_images_per_prompt"] = 1
        return kwargs, self._tokens(pipe, job)

    def _tokens(self, pipe: Any, job: ImageJob) -> int:
        """Tokens of the prompt (and negative prompt) as the first text encoder reads them."""
        tokenizer = getattr(pipe, "tokenizer", None)
        if tokenizer is None:
            return 0
        total = 0
        for text in (job.prompt, job.negative_prompt):
            if not text:
                continue
            count = len(tokenizer(text).input_ids)
            window = getattr(tokenizer, "model_max_length", None)
            if isinstance(window, int) and count > window:
                log.warning("the prompt has %d tokens; the text encoder reads the first %d", count, window)
                count = window
            total += count
        return total

    def _one(self, pipe: Any, kwargs: dict[str, Any], job: ImageJob, index: int, sink: ProgressSink) -> Any:
        torch = self._torch
        generator = torch.Generator("cpu").manual_seed(job.seed + index)
        previews: set[int] = set()

        def on_step(p: Any, i: int, t: Any, values: dict[str, Any]) -> dict[str, Any]:
            steps = int(getattr(p, "num_timesteps", 0) or kwargs.get("num_inference_steps") or 0)
            if not previews and job.partial_images and steps:
                count = min(job.partial_images, max(0, steps - 1))
                previews.update(round(steps * (j + 1) / (count + 1)) for j in range(count))
                previews.discard(0)
            if sink({"event": "step", "image": index, "step": i + 1, "steps": steps}):
                raise _Stopped(index, i + 1)
            if i + 1 in previews:
                preview = self._preview(p, values.get("latents"))
                if preview is not None:
                    number = sorted(previews).index(i + 1)
                    if sink({"event": "partial", "image": index, "index": number,
                             "data": encode(preview, job.output_format, job.compression)}):
                        raise _Stopped(index, i + 1)
            return values

        stepping: dict[str, Any] = {}
        if "callback_on_step_end" in inspect.signature(pipe.__call__).parameters:
            stepping = {"callback_on_step_end": on_step, "callback_on_step_end_tensor_inputs": ["latents"]}
        else:
            log.warning("%s reports no steps: no progress, and a stop takes effect after the image",
                        type(pipe).__name__)
        with torch.inference_mode():
            out = pipe(**kwargs, generator=generator, output_type="pil", **stepping)
        return out.images[0]

    def _preview(self, pipe: Any, latents: Any) -> Any:
        """The image the latents stand for so far (4-D latents of a VAE pipeline), or None."""
        vae = getattr(pipe, "vae", None)
        processor = getattr(pipe, "image_processor", None)
        if vae is None or processor is None or latents is None or latents.ndim != 4:
            return None
        scale = getattr(vae.config, "scaling_factor", 1.0) or 1.0
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        with self._torch.inference_mode():
            decoded = vae.decode(latents / scale + shift, return_dict=False)[0]
        return processor.postprocess(decoded, output_type="pil")[0]

    def close(self) -> None:
        self._pipes = {}
        self.__dict__.pop("_base", None)


def _composite(made: Any, init: Any, mask: Any) -> Any:
    from PIL import Image

    if made.size != init.size:
        made = made.resize(init.size, resample=_lanczos())
    return Image.composite(made.convert("RGB"), init, mask)


def _lanczos() -> Any:
    from PIL import Image

    return Image.Resampling.LANCZOS


def _default(pipe: Any, name: str) -> Any:
    parameter = inspect.signature(pipe.__call__).parameters.get(name)
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default
