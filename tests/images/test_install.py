"""`hf://owner/repo` of a diffusers repo: what diffusers loads is installed, nothing else,
and the catalog serves the result as an image model (a loopback stand-in for the hub)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import yaml

from lokal.install.gallery import GallerySource
from lokal.install.manager import InstallManager
from lokal.models.catalog import scan_models
from tests.install.conftest import Fixture, fixture, policy_for  # noqa: F401 - the fixture


def repo_files(tiny: Path) -> dict[str, bytes]:
    folder = tiny / "tiny-sd"
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    unet = files["unet/diffusion_pytorch_model.safetensors"]
    # What real repos hold besides: variants, pickles, a root single file, other exports.
    files.update({
        "unet/diffusion_pytorch_model.fp16.safetensors": unet[:1000],
        "unet/diffusion_pytorch_model.bin": b"pickle",
        "v1-5-pruned-emaonly.safetensors": b"single file",
        "onnx/unet/model.onnx": b"onnx",
        "README.md": b"# tiny",
    })
    return files


def test_a_diffusers_repo_installs_as_an_image_model(fixture: Fixture, tmp_path: Path, tiny_sd: Path) -> None:  # noqa: F811
    files = repo_files(tiny_sd)
    fixture.state.hf["acme/Tiny-SD"] = files
    models = tmp_path / "models"
    manager = InstallManager(models, policy_for(fixture), [GallerySource("lokal", "builtin")])

    async def install() -> object:
        job = manager.start("hf://acme/Tiny-SD")
        async for _ in job.events():
            pass
        return job

    job = asyncio.run(install())
    assert job.status == "done", job.error  # type: ignore[attr-defined]
    config = yaml.safe_load((models / "tiny-sd.yaml").read_text())
    assert config["backend"] == "diffusers" and config["parameters"] == {"model": "tiny-sd"}
    installed = sorted(p.relative_to(models / "tiny-sd").as_posix() for p in (models / "tiny-sd").rglob("*")
                       if p.is_file())
    expected = sorted(p for p in files if "/" in p and not p.startswith("onnx/")
                      and ".fp16." not in p and not p.endswith(".bin")) + ["model_index.json"]
    assert installed == sorted(expected)
    for path in installed:
        assert (models / "tiny-sd" / path).read_bytes() == files[path]
    entry = next(e for e in scan_models(models) if e.name == "tiny-sd")
    assert entry.ok and entry.tasks == {"image", "image_edit"} and entry.file.diffusion.layout == "folder"


def test_a_part_with_only_a_variant_or_a_pickle_gets_that(fixture: Fixture, tmp_path: Path, tiny_sd: Path) -> None:  # noqa: F811
    files = repo_files(tiny_sd)
    unet = files.pop("unet/diffusion_pytorch_model.safetensors")
    files["unet/diffusion_pytorch_model.fp16.safetensors"] = unet
    text = files.pop("text_encoder/model.safetensors")
    files["text_encoder/pytorch_model.bin"] = text
    fixture.state.hf["acme/Half"] = files
    models = tmp_path / "models"
    manager = InstallManager(models, policy_for(fixture), [GallerySource("lokal", "builtin")])

    async def install() -> object:
        job = manager.start("hf://acme/Half", name="half")
        async for _ in job.events():
            pass
        return job

    job = asyncio.run(install())
    assert job.status == "done", job.error  # type: ignore[attr-defined]
    assert sorted(p.name for p in (models / "half" / "unet").iterdir()) == [
        "config.json", "diffusion_pytorch_model.fp16.safetensors"]
    assert sorted(p.name for p in (models / "half" / "text_encoder").iterdir()) == ["config.json", "pytorch_model.bin"]
