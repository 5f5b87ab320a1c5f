"""Image generation models as files: what a diffusers folder or a checkpoint holds.

Read from small JSON files and safetensors headers only (no torch, no diffusers), when
the catalog scans the models folder:

* a **diffusers folder**: `model_index.json` names the pipeline class and its parts
  (a UNet or transformer, a VAE, text encoders and tokenizers, a scheduler), each in a
  subfolder with its `config.json` and weights. Recognised wherever it is.
* a **single-file checkpoint** (`.safetensors`, the original Stable Diffusion layout with
  every part in one file): only when a config says `backend: diffusers`, since a loose
  `.safetensors` could be anything. Which pipeline it is for is read from its tensor
  names; its parts' configs and tokenizer come from a diffusers folder the config names
  (`diffusers.pipeline_config`) or from the Hugging Face cache. `.ckpt` (a pickle, which
  runs code when loaded) is refused.
* a **stable-diffusion.cpp** model (`backend: stablediffusion-ggml`, LocalAI's name): a
  GGUF, safetensors or ckpt file that engine reads itself.

What a pipeline can do (image-to-image, inpainting) is decided by its family, from the
table below: the families of diffusers 0.42 whose image-to-image and inpainting
pipelines are distinct classes taking an input image (and a mask)
(`tests/models/test_diffusion_files.py` checks the table against the installed
diffusers' AutoPipeline mappings).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lokal.formats.modelfile import ModelFile, ModelFileError

#: The engines that serve image models (their names in `backend:`, through the config's aliases).
DIFFUSERS = "diffusers"
SD_GGML = "stablediffusion-ggml"

#: Text-to-image (and image-to-image) pipeline classes lokal knows -> their family.
PIPELINE_FAMILIES: dict[str, str] = {
    "StableDiffusionPipeline": "stable-diffusion",
    "StableDiffusionImg2ImgPipeline": "stable-diffusion",
    "StableDiffusionInpaintPipeline": "stable-diffusion",
    "StableDiffusionPAGPipeline": "stable-diffusion-pag",
    "StableDiffusionXLPipeline": "stable-diffusion-xl",
    "StableDiffusionXLImg2ImgPipeline": "stable-diffusion-xl",
    "StableDiffusionXLInpaintPipeline": "stable-diffusion-xl",
    "StableDiffusionXLPAGPipeline": "stable-diffusion-xl-pag",
    "StableDiffusion3Pipeline": "stable-diffusion-3",
    "StableDiffusion3Img2ImgPipeline": "stable-diffusion-3",
    "StableDiffusion3InpaintPipeline": "stable-diffusion-3",
    "StableDiffusion3PAGPipeline": "stable-diffusion-3-pag",
    "LatentConsistencyModelPipeline": "lcm",
    "LatentConsistencyModelImg2ImgPipeline": "lcm",
    "FluxPipeline": "flux",
    "FluxImg2ImgPipeline": "flux",
    "FluxInpaintPipeline": "flux",
    "IFPipeline": "if",
    "KandinskyCombinedPipeline": "kandinsky",
    "KandinskyV22CombinedPipeline": "kandinsky22",
    "Kandinsky3Pipeline": "kandinsky3",
    "KolorsPipeline": "kolors",
    "QwenImagePipeline": "qwenimage",
    "ZImagePipeline": "z-image",
    # Text-to-image only.
    "PixArtAlphaPipeline": "pixart-alpha",
    "PixArtSigmaPipeline": "pixart-sigma",
    "SanaPipeline": "sana",
    "AuraFlowPipeline": "auraflow",
    "HunyuanDiTPipeline": "hunyuan",
    "LuminaPipeline": "lumina",
    "Lumina2Pipeline": "lumina2",
    "CogView3PlusPipeline": "cogview3",
    "CogView4Pipeline": "cogview4",
    "ChromaPipeline": "chroma",
    "WuerstchenCombinedPipeline": "wuerstchen",
    "StableCascadeCombinedPipeline": "cascade",
}
#: Families with an image-to-image pipeline (an input image).
EDIT_FAMILIES = frozenset({
    "stable-diffusion", "stable-diffusion-pag", "stable-diffusion-xl", "stable-diffusion-xl-pag",
    "stable-diffusion-3", "stable-diffusion-3-pag", "lcm", "flux", "if", "kandinsky", "kandinsky22",
    "kandinsky3", "kolors", "qwenimage", "z-image",
})
#: Families with an inpainting pipeline (an input image and a mask).
INPAINT_FAMILIES = frozenset({
    "stable-diffusion", "stable-diffusion-pag", "stable-diffusion-xl", "stable-diffusion-xl-pag",
    "stable-diffusion-3", "flux", "if", "kandinsky", "kandinsky22", "qwenimage", "z-image",
})
#: What a user may read in an error: the model kinds that take an input image.
EDIT_KINDS = ("Stable Diffusion 1.x/2.x, SDXL, SD3, Flux, LCM, Kandinsky, Kolors, Qwen-Image, "
              "Z-Image and DeepFloyd IF models (diffusers), and stable-diffusion.cpp models")
INPAINT_KINDS = ("Stable Diffusion 1.x/2.x, SDXL, SD3, Flux, Kandinsky, Qwen-Image, Z-Image and "
                 "DeepFloyd IF models (diffusers), and stable-diffusion.cpp models")

# The side a family was trained at, for single files (a folder says it in its configs).
_NATIVE = {"stable-diffusion": 512, "stable-diffusion-xl": 1024, "stable-diffusion-3": 1024, "flux": 1024}
_WEIGHT_NAMES = ("diffusion_pytorch_model", "model")
_SAFETENSORS_HEADER_LIMIT = 100 << 20
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


@dataclass(frozen=True)
class DiffusionInfo:
    """What the catalog knows of an image model without loading it."""

    layout: Literal["folder", "single-file", "sd-cpp"]
    pipeline: str | None  # the diffusers pipeline class (None: diffusers picks, or not diffusers)
    family: str | None
    edits: bool  # image-to-image
    inpaint: bool  # image-to-image under a mask
    native_size: int | None  # the side (pixels) it was trained at: the default size
    multiple: int  # width and height must be multiples of this
    min_side: int  # the least side its latent survives the network's downsampling with
    weights: int  # bytes of its weights once loaded (float32)
    #: channels of the VAE's widest full-resolution feature maps, and of the denoiser's first block
    vae_channels: int = 256
    denoiser_channels: int = 320
    vae_factor: int = 8  # pixels per latent cell along a side
    #: weights saved only as a variant (`*.fp16.safetensors`): diffusers must be told
    variant: str | None = None
    #: model_index.json parts whose folders are missing (optional parts left out on purpose)
    missing: tuple[str, ...] = ()
    #: a single file's configs and tokenizer: the diffusers folder named for them (None: the HF cache)
    config_folder: Path | None = None
    components: dict[str, Any] = field(default_factory=dict)

    @property
    def default_size(self) -> int:
        return self.native_size or 512


def is_diffusers_folder(path: Path) -> bool:
    return path.is_dir() and (path / "model_index.json").is_file()


def is_diffusers_model(path: Path) -> bool:
    """A diffusers folder with weights: a model on its own (a folder of configs and tokenizer
    only is a single file's `pipeline_config`, not a model)."""
    return is_diffusers_folder(path) and any(
        p.suffix in (".safetensors", ".bin") for part in path.iterdir() if part.is_dir() for p in part.iterdir())


def inspect(path: Path, engine: str | None, *, pipeline: str | None = None,
            config_folder: Path | None = None) -> ModelFile | None:
    """The image model at path as its config's engine names it, or None when it is no image
    model (then the other kinds are tried). ModelFileError says why one cannot serve."""
    if engine == SD_GGML:
        return ModelFile(kind="sd-cpp", diffusion=_sd_cpp(path))
    if is_diffusers_folder(path):
        if engine not in (None, DIFFUSERS):
            return None  # the planner says the backend cannot serve a diffusers folder
        return ModelFile(kind="diffusers", diffusion=_folder(path, pipeline))
    if engine != DIFFUSERS:
        return None
    if path.is_dir():
        raise ModelFileError(f"{path.name}/ is a folder but not a diffusers model (no model_index.json)")
    return ModelFile(kind="diffusers", diffusion=_single_file(path, pipeline, config_folder))


def family_of(pipeline: str | None) -> str | None:
    return PIPELINE_FAMILIES.get(pipeline or "")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelFileError(f"{path.parent.name}/{path.name} cannot be read as JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ModelFileError(f"{path.parent.name}/{path.name} is not a JSON object")
    return value


def safetensors_header(path: Path) -> dict[str, Any]:
    """The tensor table of a .safetensors file (name -> dtype, shape, offsets), header only."""
    try:
        with path.open("rb") as stream:
            head = stream.read(8)
            if len(head) < 8:
                raise ModelFileError(f"{path.name} is too short to be a safetensors file")
            (size,) = struct.unpack("<Q", head)
            if size > _SAFETENSORS_HEADER_LIMIT:
                raise ModelFileError(f"{path.name} is not a safetensors file (its header would be "
                                     f"{size} bytes)")
            raw = stream.read(size)
    except OSError as exc:
        raise ModelFileError(f"cannot read {path.name}: {exc.strerror}") from exc
    try:
        table = json.loads(raw)
    except ValueError as exc:
        raise ModelFileError(f"{path.name} is not a safetensors file (its header is not JSON)") from exc
    if not isinstance(table, dict):
        raise ModelFileError(f"{path.name} is not a safetensors file")
    table.pop("__metadata__", None)
    return table


def _float32_bytes(table: dict[str, Any]) -> int:
    """Bytes of the table's floating-point tensors as float32, the rest as stored."""
    total = 0
    for entry in table.values():
        if not isinstance(entry, dict):
            continue
        count = math.prod(int(n) for n in entry.get("shape") or [])
        dtype = str(entry.get("dtype", "F32"))
        total += count * (4 if dtype.startswith(("F", "BF")) else _DTYPE_BYTES.get(dtype, 4))
    return total


def _component_weights(folder: Path) -> tuple[int, str | None]:
    """Bytes a component folder's weights take loaded (float32), and the variant they need."""
    if not folder.is_dir():
        return 0, None
    for stem in _WEIGHT_NAMES:
        single = folder / f"{stem}.safetensors"
        if single.is_file():
            return _float32_bytes(safetensors_header(single)), None
        index = folder / f"{stem}.safetensors.index.json"
        if index.is_file():
            shards = sorted(set((_read_json(index).get("weight_map") or {}).values()))
            return sum(_float32_bytes(safetensors_header(folder / s)) for s in shards), None
        legacy = folder / f"{stem}.bin"
        if legacy.is_file():
            return legacy.stat().st_size, None
    for candidate in sorted(folder.glob("*.*.safetensors")):  # only a variant: fp16, bf16, ...
        variant = candidate.name.split(".")[-2]
        return _float32_bytes(safetensors_header(candidate)), variant
    return 0, None


def _config(folder: Path, name: str) -> dict[str, Any]:
    path = folder / name / "config.json"
    return _read_json(path) if path.is_file() else {}


def _vae_factor(vae: dict[str, Any]) -> int:
    blocks = vae.get("block_out_channels") or [128, 256, 512, 512]
    return 2 ** (len(blocks) - 1)


def _vae_channels(vae: dict[str, Any]) -> int:
    blocks = [int(c) for c in vae.get("block_out_channels") or [128, 256, 512, 512]]
    # The decoder reaches full resolution by upsampling its second-widest level.
    return blocks[1] if len(blocks) > 1 else blocks[0]


def _folder(path: Path, pipeline: str | None, *, allow_empty: bool = False) -> DiffusionInfo:
    index = _read_json(path / "model_index.json")
    declared = index.get("_class_name")
    if not isinstance(declared, str) or not declared:
        raise ModelFileError(f"{path.name}/model_index.json names no pipeline class (_class_name)")
    pipeline = pipeline or declared
    components = {k: v for k, v in index.items() if not k.startswith("_")}
    weights, variant, missing = 0, None, []
    for name, value in components.items():
        if not (isinstance(value, list) and len(value) == 2 and value[0] is not None):
            continue  # a part the pipeline was saved without (None)
        if not (path / name).is_dir():
            missing.append(name)
            continue
        size, needs = _component_weights(path / name)
        weights += size
        variant = variant or needs
    if not weights and not allow_empty:
        raise ModelFileError(f"{path.name}/ holds no weights, only configs (a folder like that is what "
                             "diffusers.pipeline_config of a single-file checkpoint names)")
    vae = _config(path, "vae")
    denoiser = _config(path, "unet") or _config(path, "transformer") or _config(path, "prior")
    factor = _vae_factor(vae) if vae else 8
    patch = int(denoiser.get("patch_size") or 1)
    sample = denoiser.get("sample_size")
    family = family_of(pipeline)
    # sample_size counts latent cells (a UNet's and a DiT's alike).
    native = int(sample) * factor if isinstance(sample, int) else _NATIVE.get(family or "")
    downs = len(denoiser.get("down_block_types") or []) or 1
    multiple = max(8, factor * patch)
    min_side = max(multiple, factor * 2 ** (downs - 1) * patch)
    channels = denoiser.get("block_out_channels")
    width = int(denoiser.get("num_attention_heads") or 24) * int(denoiser.get("attention_head_dim") or 64)
    return DiffusionInfo(
        layout="folder", pipeline=pipeline, family=family,
        edits=family in EDIT_FAMILIES, inpaint=family in INPAINT_FAMILIES,
        native_size=native, multiple=multiple, min_side=min_side, weights=weights,
        vae_channels=_vae_channels(vae) if vae else 256,
        vae_factor=factor,
        denoiser_channels=int(channels[0]) if isinstance(channels, list) and channels else width,
        variant=variant, missing=tuple(missing), components=components)


def _single_file(path: Path, pipeline: str | None, config_folder: Path | None) -> DiffusionInfo:
    suffix = path.suffix.lower()
    if suffix in (".ckpt", ".pt", ".pth", ".bin"):
        raise ModelFileError(f"{path.name} is a pickle checkpoint, which runs code when it is loaded; "
                             "lokal loads single-file checkpoints from .safetensors only (convert it, "
                             "or use the model's .safetensors release)")
    if suffix != ".safetensors":
        raise ModelFileError(f"{path.name} is not a single-file diffusion checkpoint (.safetensors) "
                             "or a diffusers folder (model_index.json)")
    table = safetensors_header(path)
    inferred, native = _infer_checkpoint(table)
    if pipeline is None:
        if inferred is None:
            raise ModelFileError(
                f"cannot tell which pipeline {path.name} is for from its tensor names; set "
                "diffusers.pipeline_type in its config (e.g. StableDiffusionPipeline), or use the "
                "model's diffusers folder")
        pipeline = inferred
    configured: DiffusionInfo | None = None
    if config_folder is not None:
        if not is_diffusers_folder(config_folder):
            raise ModelFileError(f"diffusers.pipeline_config {config_folder.name!r} is not a diffusers "
                                 "folder (no model_index.json)")
        configured = _folder(config_folder, pipeline, allow_empty=True)
    family = family_of(pipeline)
    vae_channels = 256
    if any(k.startswith("first_stage_model.decoder.up.1.") for k in table):
        shape = table.get("first_stage_model.decoder.up.1.block.0.conv1.weight", {}).get("shape")
        if isinstance(shape, list) and shape:
            vae_channels = int(shape[0])
    return DiffusionInfo(
        layout="single-file", pipeline=pipeline, family=family,
        edits=family in EDIT_FAMILIES, inpaint=family in INPAINT_FAMILIES,
        native_size=configured.native_size if configured else native or _NATIVE.get(family or ""),
        multiple=configured.multiple if configured else 8,
        min_side=configured.min_side if configured else 64,
        weights=_float32_bytes(table),
        vae_channels=configured.vae_channels if configured else vae_channels,
        vae_factor=configured.vae_factor if configured else 8,
        denoiser_channels=configured.denoiser_channels if configured else 320,
        config_folder=config_folder)


def _infer_checkpoint(table: dict[str, Any]) -> tuple[str | None, int | None]:
    """The diffusers pipeline an original-layout checkpoint is for, and its native side."""
    keys = table.keys()

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if has("model.diffusion_model.joint_blocks.") or has("double_blocks.") \
            or has("model.diffusion_model.double_blocks."):
        return None, None  # SD3 / Flux single files hold the denoiser alone: not a whole pipeline
    if not has("model.diffusion_model.input_blocks."):
        return None, None
    conv_in = table.get("model.diffusion_model.input_blocks.0.0.weight", {}).get("shape")
    inpainting = isinstance(conv_in, list) and len(conv_in) > 1 and conv_in[1] == 9
    if has("conditioner.embedders.1."):
        return ("StableDiffusionXLInpaintPipeline" if inpainting else "StableDiffusionXLPipeline"), 1024
    if has("cond_stage_model.model."):  # OpenCLIP: Stable Diffusion 2.x
        return ("StableDiffusionInpaintPipeline" if inpainting else "StableDiffusionPipeline"), 768
    if has("cond_stage_model.transformer."):
        return ("StableDiffusionInpaintPipeline" if inpainting else "StableDiffusionPipeline"), 512
    return None, None


def _sd_cpp(path: Path) -> DiffusionInfo:
    if not path.is_file():
        raise ModelFileError(f"{path.name} is not a file; stable-diffusion.cpp reads one model file "
                             "(GGUF, safetensors or ckpt)")
    size = path.stat().st_size
    return DiffusionInfo(layout="sd-cpp", pipeline=None, family=None, edits=True, inpaint=True,
                         native_size=None, multiple=8, min_side=64, weights=size)
