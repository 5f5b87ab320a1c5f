"""Image models in the catalog: which folders and files are image models, what they can do,
how they load and what they are estimated to take. Headers and JSON only: no torch."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from lokal.errors import ModelCapabilityError
from lokal.formats import diffusion
from lokal.models.catalog import scan_models
from lokal.models.memory import estimate
from lokal.models.planner import EngineDefaults, check_task, main_task, plan_load

SD_INDEX = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
            "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"], "safety_checker": [None, None]}


def safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> Path:
    """A valid .safetensors file of zeros with these (dtype, shape) tensors."""
    sizes = {"F32": 4, "F16": 2}
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        count = 1
        for n in shape:
            count *= n
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + count * sizes[dtype]]}
        offset += count * sizes[dtype]
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))
    return path


def sd_folder(root: Path, *, index: dict | None = None, weight_dtype: str = "F32", variant: str | None = None) -> Path:
    root.mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps(index or SD_INDEX))
    configs = {"unet": {"sample_size": 64, "block_out_channels": [320, 640, 1280, 1280],
                        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]},
               "vae": {"block_out_channels": [128, 256, 512, 512]}, "text_encoder": {}, "scheduler": {},
               "tokenizer": {}}
    for part, config in configs.items():
        (root / part).mkdir()
        (root / part / ("scheduler_config.json" if part == "scheduler" else "config.json")).write_text(json.dumps(config))
    suffix = f".{variant}.safetensors" if variant else ".safetensors"
    safetensors(root / "unet" / f"diffusion_pytorch_model{suffix}", {"w": (weight_dtype, [1000, 100])})
    safetensors(root / "vae" / f"diffusion_pytorch_model{suffix}", {"w": (weight_dtype, [100, 10])})
    safetensors(root / "text_encoder" / f"model{suffix}", {"w": (weight_dtype, [10, 10])})
    return root


def entry(models: Path, name: str):  # noqa: ANN201
    found = {e.name: e for e in scan_models(models)}
    return found[name]


def test_a_diffusers_folder_is_an_image_model_wherever_it_is(tmp_path: Path) -> None:
    models = tmp_path / "models"
    sd_folder(models / "sd15")
    loose = entry(models, "sd15")  # no config needed: model_index.json says what it is
    assert loose.ok and loose.tasks == {"image", "image_edit"} and loose.file.kind == "diffusers"
    info = loose.file.diffusion
    assert (info.pipeline, info.family, info.native_size, info.multiple, info.min_side) == (
        "StableDiffusionPipeline", "stable-diffusion", 512, 8, 64)
    assert info.missing == () and info.variant is None
    # Weights count as float32 once loaded, whatever they are stored as.
    assert info.weights == (1000 * 100 + 100 * 10 + 10 * 10) * 4
    (models / "art.yaml").write_text("name: art\nbackend: diffusers\nparameters:\n  model: sd15\nstep: 20\n")
    configured = entry(models, "art")
    assert configured.ok and configured.tasks == {"image", "image_edit"}
    assert "sd15" not in {e.name for e in scan_models(models)}  # a config names it: not twice
    assert main_task(configured) == "image"


def test_fp16_only_weights_are_loaded_as_their_variant_and_counted_as_float32(tmp_path: Path) -> None:
    sd_folder(tmp_path / "models" / "half", weight_dtype="F16", variant="fp16")
    info = entry(tmp_path / "models", "half").file.diffusion
    assert info.variant == "fp16" and info.weights == (1000 * 100 + 100 * 10 + 10 * 10) * 4


def test_a_loose_safetensors_is_not_a_model_but_a_configured_single_file_is(tmp_path: Path) -> None:
    models = tmp_path / "models"
    checkpoint = {"model.diffusion_model.input_blocks.0.0.weight": ("F16", [320, 4, 3, 3]),
                  "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": ("F16", [77, 8]),
                  "first_stage_model.decoder.up.1.block.0.conv1.weight": ("F16", [256, 256, 3, 3])}
    safetensors(models / "dreamy.safetensors", checkpoint)
    assert scan_models(models) == []  # a loose .safetensors could be anything
    (models / "dreamy.yaml").write_text("name: dreamy\nbackend: diffusers\nparameters:\n  model: dreamy.safetensors\n")
    found = entry(models, "dreamy")
    assert found.ok, found.error
    info = found.file.diffusion
    assert (info.layout, info.pipeline, info.native_size, info.vae_channels) == (
        "single-file", "StableDiffusionPipeline", 512, 256)
    # SDXL and inpainting checkpoints are told apart by their tensors.
    xl = dict(checkpoint, **{"conditioner.embedders.1.model.ln_final.weight": ("F16", [4])})
    safetensors(models / "xl.safetensors", xl)
    inpaint = dict(checkpoint, **{"model.diffusion_model.input_blocks.0.0.weight": ("F16", [320, 9, 3, 3])})
    safetensors(models / "fill.safetensors", inpaint)
    for name in ("xl", "fill"):
        (models / f"{name}.yaml").write_text(f"name: {name}\nbackend: diffusers\nparameters:\n  model: {name}.safetensors\n")
    assert entry(models, "xl").file.diffusion.pipeline == "StableDiffusionXLPipeline"
    assert entry(models, "fill").file.diffusion.pipeline == "StableDiffusionInpaintPipeline"


def test_a_folder_of_configs_only_is_no_model(tmp_path: Path) -> None:
    models = tmp_path / "models"
    configs = sd_folder(models / "sd15-configs")
    for weights in configs.rglob("*.safetensors"):
        weights.unlink()
    assert scan_models(models) == []  # loose: not listed
    (models / "art.yaml").write_text("name: art\nbackend: diffusers\nparameters:\n  model: sd15-configs\n")
    assert "holds no weights" in entry(models, "art").error


def test_files_that_cannot_be_image_models_say_why(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "old.ckpt").write_bytes(b"\x80\x02pickle")
    safetensors(models / "flux.safetensors", {"double_blocks.0.img_attn.qkv.weight": ("F16", [4, 4])})
    safetensors(models / "what.safetensors", {"something": ("F32", [2])})
    sd_folder(models / "sd15")
    configs = {
        "old": "parameters:\n  model: old.ckpt\n",
        "flux": "parameters:\n  model: flux.safetensors\n",
        "what": "parameters:\n  model: what.safetensors\n",
        "sched": "parameters:\n  model: sd15\ndiffusers:\n  scheduler_type: warp_drive\n",
        "cfg": "parameters:\n  model: what.safetensors\ndiffusers:\n  pipeline_config: ../elsewhere\n",
        "control": "parameters:\n  model: sd15\ndiffusers:\n  control_net: lllyasviel/sd-controlnet-canny\n",
        "params": "parameters:\n  model: sd15\ndiffusers:\n  enable_parameters: negative_prompt,teleport\n",
        "pipe": "parameters:\n  model: sd15\ndiffusers:\n  pipeline_type: not a class\n",
    }
    for name, body in configs.items():
        (models / f"{name}.yaml").write_text(f"name: {name}\nbackend: diffusers\n{body}")
    found = {e.name: e for e in scan_models(models)}
    assert "pickle" in found["old"].error and "safetensors" in found["old"].error
    assert "pipeline_type" in found["flux"].error
    assert "pipeline_type" in found["what"].error
    assert "warp_drive" in found["sched"].error and "euler_a" in found["sched"].error
    assert "inside the models folder" in found["cfg"].error
    assert "control image" in found["control"].error
    assert "teleport" in found["params"].error
    assert "pipeline class" in found["pipe"].error


def test_what_a_model_serves_decides_the_400(tmp_path: Path) -> None:
    models = tmp_path / "models"
    sd_folder(models / "sd15")
    (models / "pixart.yaml").write_text("name: pixart\nbackend: diffusers\nparameters:\n  model: sd15\n"
                                        "diffusers:\n  pipeline_type: PixArtSigmaPipeline\n")
    pixart = entry(models, "pixart")
    assert pixart.tasks == {"image"}
    with pytest.raises(ModelCapabilityError) as caught:
        check_task(pixart, "image_edit")
    assert caught.value.param == "model" and "Stable Diffusion" in caught.value.message
    with pytest.raises(ModelCapabilityError) as caught:
        check_task(pixart, "chat")
    assert "It serves: image." in caught.value.message


def test_the_plan_carries_the_config_and_the_estimate_grows_with_the_largest_size(tmp_path: Path) -> None:
    models = tmp_path / "models"
    sd_folder(models / "sd15")
    (models / "art.yaml").write_text(
        "name: art\nbackend: diffusers\nparameters:\n  model: sd15\nstep: 25\ncfg_scale: 6.5\nthreads: 1\n"
        "diffusers:\n  scheduler_type: k_dpmpp_2m\n  enable_parameters: negative_prompt,num_inference_steps\n"
        "  clip_skip: 2\n")
    art = entry(models, "art")
    assert art.config.unknown_fields == []  # LocalAI's image fields are read, not left over
    small = plan_load(art, "image_edit", EngineDefaults(threads=2, parallel=4, image_max_side=512))
    big = plan_load(art, "image", EngineDefaults(threads=2, parallel=4, image_max_side=1024))
    assert small.engine == "diffusers" and small.instance == big.instance == "image"
    spec = small.options.diffusion
    assert spec.scheduler == ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True})
    assert spec.enabled == ["negative_prompt", "num_inference_steps"]
    assert (spec.steps, spec.guidance, spec.clip_skip, small.options.threads) == (25, 6.5, 2, 1)
    a, b = estimate("diffusers", small.options), estimate("diffusers", big.options)
    assert a.weights == b.weights == art.file.diffusion.weights
    assert b.buffers == 4 * a.buffers  # activations scale with the pixels of the largest image
    # SD 1.5's VAE at 512x512: four maps of 256 channels at full resolution, 1 GiB.
    assert a.buffers >= 4 * 512 * 512 * 256 * 4


def test_the_family_table_agrees_with_the_installed_diffusers() -> None:
    """Edits are promised for a family exactly when diffusers maps it to a distinct
    image-to-image (inpainting) pipeline taking an image (and a mask)."""
    pytest.importorskip("diffusers")
    import inspect

    from diffusers.pipelines import auto_pipeline

    text = auto_pipeline.AUTO_TEXT2IMAGE_PIPELINES_MAPPING
    for name, family in diffusion.PIPELINE_FAMILIES.items():
        if "Img2Img" in name or "Inpaint" in name:
            continue
        assert text[family].__name__ == name, (family, name)
        for mapping, promised, takes in (
                (auto_pipeline.AUTO_IMAGE2IMAGE_PIPELINES_MAPPING, diffusion.EDIT_FAMILIES, {"image"}),
                (auto_pipeline.AUTO_INPAINT_PIPELINES_MAPPING, diffusion.INPAINT_FAMILIES, {"image", "mask_image"})):
            other = mapping.get(family)
            distinct = other is not None and other is not text[family] \
                and takes <= set(inspect.signature(other.__call__).parameters)
            assert (family in promised) == distinct, (family, other)
