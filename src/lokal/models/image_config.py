"""The image-model parts of a LocalAI model config: the `diffusers:` block, `step`, `cfg_scale`.

LocalAI's diffusers backend reads these (`backend: diffusers`)::

    diffusers:
      pipeline_type: StableDiffusionPipeline   # a diffusers pipeline class (default: the folder's)
      scheduler_type: euler_a                  # one of SCHEDULERS
      enable_parameters: "negative_prompt,num_inference_steps"
      clip_skip: 2
    step: 25          # denoising steps when a request sets none
    cfg_scale: 7      # classifier-free guidance (diffusers' guidance_scale)

lokal adds `pipeline_config`: a diffusers folder in the models folder whose configs and
tokenizer a single-file checkpoint is loaded with (the checkpoint holds weights only).
`cuda`, `img2img`, `clip_model`, `clip_subfolder` and `control_net` are LocalAI's too:
kept, and refused where lokal would have to act on them (`control_net`, a CLIP model).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lokal.formats import diffusion
from lokal.formats.modelfile import ModelFile, ModelFileError

#: LocalAI's scheduler names -> a diffusers scheduler class and the options it is built with.
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "k_lms": ("LMSDiscreteScheduler", {"use_karras_sigmas": True}),
    "dpm_2": ("KDPM2DiscreteScheduler", {}),
    "k_dpm_2": ("KDPM2DiscreteScheduler", {"use_karras_sigmas": True}),
    "dpm_2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    "k_dpm_2_a": ("KDPM2AncestralDiscreteScheduler", {"use_karras_sigmas": True}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "k_dpmpp_2m": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "dpmpp_sde": ("DPMSolverSinglestepScheduler", {}),
    "k_dpmpp_sde": ("DPMSolverSinglestepScheduler", {"use_karras_sigmas": True}),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "k_dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++",
                                                      "use_karras_sigmas": True}),
}

#: Pipeline call parameters `enable_parameters` may switch on (LocalAI's names).
PARAMETERS = ("negative_prompt", "num_inference_steps", "guidance_scale", "clip_skip", "image",
              "strength", "mask_image")


class DiffusersOptions(BaseModel):
    """`diffusers:` in a config."""

    model_config = ConfigDict(extra="allow")

    pipeline_type: str | None = None
    scheduler_type: str | None = None
    #: comma-separated pipeline parameters a request may set (unset: all lokal knows)
    enable_parameters: str | None = None
    clip_skip: int | None = Field(None, ge=0, le=12)
    pipeline_config: str | None = None
    cuda: bool = False
    img2img: bool = False
    clip_model: str | None = None
    clip_subfolder: str | None = None
    control_net: str | None = None

    @field_validator("pipeline_type")
    @classmethod
    def _pipeline(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if not value.isidentifier() or not value.endswith("Pipeline"):
            raise ValueError(f"{value!r} is not a diffusers pipeline class name (e.g. StableDiffusionPipeline)")
        return value

    @field_validator("scheduler_type")
    @classmethod
    def _scheduler(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        name = value.strip().lower()
        if name not in SCHEDULERS:
            raise ValueError(f"unknown scheduler_type {value!r}; known: {', '.join(SCHEDULERS)}")
        return name

    @field_validator("enable_parameters")
    @classmethod
    def _parameters(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        unknown = [p for p in _split(value) if p not in PARAMETERS]
        if unknown:
            raise ValueError(f"enable_parameters names {', '.join(unknown)}, which lokal does not pass "
                             f"to a pipeline; known: {', '.join(PARAMETERS)}")
        return value

    @property
    def enabled(self) -> list[str] | None:
        """The parameters a request may set (None: all of them)."""
        return _split(self.enable_parameters) if self.enable_parameters else None

    def refusal(self) -> str | None:
        """Why lokal cannot serve these options as configured, or None."""
        if self.control_net:
            return ("diffusers.control_net is set, but the images API has no place for a control "
                    "image; remove it to serve the model without ControlNet")
        if self.clip_model or self.clip_subfolder:
            return ("diffusers.clip_model / clip_subfolder (a replacement CLIP text encoder) are "
                    "not supported by lokal; remove them")
        return None


def _split(value: str) -> list[str]:
    return [p.strip() for p in value.split(",") if p.strip()]


def image_file(model_path: Path, engine: str | None, options: DiffusersOptions | None,
               models_path: Path | None) -> ModelFile | None:
    """The image model at model_path as its config describes it, or None when it is none
    (the catalog then reads it as the other kinds); ModelFileError says why it cannot serve."""
    options = options or DiffusersOptions()
    config_folder = None
    if options.pipeline_config is not None:
        config_folder = _confined(models_path or model_path.parent, options.pipeline_config)
    found = diffusion.inspect(model_path, engine, pipeline=options.pipeline_type, config_folder=config_folder)
    if found is not None:
        problem = options.refusal()
        if problem is not None:
            raise ModelFileError(problem)
    return found


def image_tasks(info: diffusion.DiffusionInfo) -> frozenset[str]:
    """What an image model serves: generation, and edits when its pipeline takes an image."""
    return frozenset({"image", "image_edit"} if info.edits else {"image"})


def _confined(root: Path, relative: str) -> Path:
    candidate = Path(relative)
    if not relative or candidate.is_absolute() or ".." in candidate.parts or "\\" in relative:
        raise ModelFileError(f"diffusers.pipeline_config {relative!r} must be a folder inside the "
                             "models folder, named relative to it")
    resolved = (root / candidate).resolve()
    if root.resolve() not in resolved.parents:
        raise ModelFileError(f"diffusers.pipeline_config {relative!r} points outside the models folder")
    return resolved
