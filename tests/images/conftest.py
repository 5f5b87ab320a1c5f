"""Image generation tests: a tiny Stable Diffusion pipeline built here (tests/fixtures/tiny_diffusion.py),
placed in a models folder as a diffusers folder and as a single-file checkpoint."""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LokalServer, place_model
from tests.fixtures import tiny_diffusion

STEPS = 2  # what the test configs run when a request sets no step


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder holding tiny-sd/, tiny-sd.safetensors and tiny-sd-config/ (built once)."""
    missing = [m for m in tiny_diffusion.REQUIRED if importlib.util.find_spec(m) is None]
    if missing:
        pytest.fail(f"the image tests need {', '.join(missing)}: pip install 'lokal[images]' "
                    "(python3 dev.py test installs it)")
    return tiny_diffusion.build(tmp_path_factory.mktemp("tiny-sd-build"))


def _link(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def place_tiny(models: Path, tiny: Path) -> None:
    """The tiny pipeline in models: `tiny-sd/`, `tiny-sd.safetensors`, `tiny-sd-config/`."""
    models.mkdir(parents=True, exist_ok=True)
    for folder in (tiny_diffusion.NAME, f"{tiny_diffusion.NAME}-config"):
        shutil.copytree(tiny / folder, models / folder, copy_function=_link)
    _link(str(tiny / f"{tiny_diffusion.NAME}.safetensors"), str(models / f"{tiny_diffusion.NAME}.safetensors"))


CONFIGS = {
    # The folder, and the same weights as one checkpoint (same scheduler: the same images).
    "tiny": f"name: tiny\nbackend: diffusers\nparameters:\n  model: tiny-sd\nstep: {STEPS}\n",
    "single": (f"name: single\nbackend: diffusers\nparameters:\n  model: tiny-sd.safetensors\n"
               f"diffusers:\n  pipeline_config: tiny-sd-config\nstep: {STEPS}\n"),
    # A text-to-image-only family (never loaded: its requests are refused before).
    "text-only": ("name: text-only\nbackend: diffusers\nparameters:\n  model: tiny-sd\n"
                  "diffusers:\n  pipeline_type: PixArtSigmaPipeline\n"),
}
MAX_SIDE = 128
MAX_N = 3


def image_models(models: Path, tiny: Path, *names: str) -> Path:
    place_tiny(models, tiny)
    for name in names or tuple(CONFIGS):
        (models / f"{name}.yaml").write_text(CONFIGS[name])
    return models


@pytest.fixture(scope="session")
def image_server(tmp_path_factory: pytest.TempPathFactory, tiny_sd: Path) -> Iterator[LokalServer]:
    """The tiny pipeline as `tiny` and `single`, `text-only`, and SmolLM2 as the chat model `smol`."""
    models = image_models(tmp_path_factory.mktemp("images") / "models", tiny_sd)
    place_model(models, "smol.gguf")
    (models / "smol.yaml").write_text("name: smol\nparameters:\n  model: smol.gguf\ncontext_size: 512\n")
    with LokalServer(models, "--image-max-side", str(MAX_SIDE), "--image-max-n", str(MAX_N),
                     "--preload-models", "tiny") as server:
        server.wait_ready(timeout=300)
        yield server
