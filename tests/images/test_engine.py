"""The diffusers engine in its worker process, loaded through lokal's catalog and planner:
images of the asked size and format, seeds, steps reported as they run, a stop that ends
the work before its last step, edits, previews, and the memory it takes against the estimate."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lokal.engines.base import Engine, ImageJob
from lokal.errors import EngineError
from lokal.models.catalog import scan_models
from lokal.models.memory import MIB, estimate
from lokal.models.planner import EngineDefaults, LoadPlan, plan_load
from tests.images.conftest import MAX_SIDE, STEPS, image_models


def decode(data: bytes) -> Any:
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory, tiny_sd: Path) -> LoadPlan:
    models = image_models(tmp_path_factory.mktemp("engine") / "models", tiny_sd, "tiny")
    entry = next(e for e in scan_models(models) if e.name == "tiny")
    return plan_load(entry, "image", EngineDefaults(threads=2, parallel=1, image_max_side=MAX_SIDE))


@pytest.fixture(scope="module")
def engine(plan: LoadPlan) -> Iterator[Engine]:
    from lokal.engines.worker.client import WorkerFactory

    worker = WorkerFactory()(plan.engine, plan.options)
    yield worker
    worker.close()


def run(engine: Engine, job: ImageJob, stop_at: int | None = None) -> tuple[list[dict[str, Any]], Any]:
    events: list[dict[str, Any]] = []

    def sink(event: dict[str, Any]) -> bool:
        events.append(event)
        return stop_at is not None and event.get("event") == "step" and event["step"] >= stop_at

    return events, engine.generate_image(job, sink)


def images(events: list[dict[str, Any]]) -> list[bytes]:
    return [e["data"] for e in events if e["event"] == "image"]


def test_images_of_the_asked_size_and_number_with_every_step_reported(engine: Engine) -> None:
    assert engine.slots == 1
    events, result = run(engine, ImageJob(prompt="a red cat", width=64, height=48, n=2, seed=7))
    assert result.images == 2 and result.stopped_at is None and result.prompt_tokens > 2
    start = events[0]
    assert start["event"] == "start" and start["images"] == 2
    steps = [e for e in events if e["event"] == "step"]
    per_image = steps[0]["steps"]
    assert per_image >= STEPS  # the config's step (PNDM adds one warm-up step)
    assert [(e["image"], e["step"]) for e in steps] == [(i, s) for i in range(2) for s in range(1, per_image + 1)]
    made = [e for e in events if e["event"] == "image"]
    assert [e["image"] for e in made] == [0, 1] and [e["seed"] for e in made] == [7, 8]
    for data in images(events):
        picture = decode(data)
        assert picture.format == "PNG" and picture.size == (64, 48)
    assert images(events)[0] != images(events)[1]  # seed + k for image k


def test_the_same_seed_gives_the_same_bytes_and_another_seed_other_bytes(engine: Engine) -> None:
    job = ImageJob(prompt="a blue dog", width=64, height=64, seed=1234)
    first, _ = run(engine, job)
    again, _ = run(engine, job)
    other, _ = run(engine, ImageJob(prompt="a blue dog", width=64, height=64, seed=1235))
    assert images(first) == images(again)
    assert images(first) != images(other)
    prompt, _ = run(engine, ImageJob(prompt="a red cat", width=64, height=64, seed=1234))
    assert images(prompt) != images(first)  # the prompt reaches the UNet


@pytest.mark.parametrize("fmt,pil", [("jpeg", "JPEG"), ("webp", "WEBP"), ("png", "PNG")])
def test_output_formats(engine: Engine, fmt: str, pil: str) -> None:
    events, _ = run(engine, ImageJob(prompt="a cat", width=32, height=64, seed=3, output_format=fmt,
                                     compression=80))
    picture = decode(images(events)[0])
    assert picture.format == pil and picture.size == (32, 64)


def test_a_stop_ends_the_work_before_its_last_step_and_the_engine_serves_on(engine: Engine) -> None:
    events, result = run(engine, ImageJob(prompt="a cat", width=64, height=64, n=2, steps=12, seed=1), stop_at=3)
    steps = [e for e in events if e["event"] == "step"]
    assert steps[-1]["step"] == 3 and steps[-1]["steps"] > 3  # no step was reported after the stop
    # The stop crosses to the worker process while it runs on: it takes effect at the step
    # under way when it arrives, or the next one, far from the last.
    assert result.stopped_at in ((0, 3), (0, 4)) and result.images == 0 and images(events) == []
    events, result = run(engine, ImageJob(prompt="a cat", width=64, height=64, seed=1))
    assert result.images == 1 and len(images(events)) == 1


def test_previews_are_decoded_latents_at_spaced_steps(engine: Engine) -> None:
    events, _ = run(engine, ImageJob(prompt="a cat", width=64, height=64, steps=6, seed=2, partial_images=2))
    partials = [e for e in events if e["event"] == "partial"]
    assert [p["index"] for p in partials] == [0, 1]
    order = [e["event"] for e in events]
    assert order.index("partial") > order.index("step") and order[-1] == "image"
    for partial in partials:
        assert decode(partial["data"]).size == (64, 64)
    assert partials[0]["data"] != partials[1]["data"] != images(events)[0]


def test_edits_change_the_image_and_a_mask_keeps_what_it_does_not_cover(engine: Engine) -> None:
    from PIL import Image, ImageChops, ImageStat

    source = Image.new("RGB", (64, 64), (200, 30, 30))
    buffer = io.BytesIO()
    source.save(buffer, format="PNG")
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (16, 16, 48, 48))  # transparent: repaint (OpenAI's mask)
    mask_bytes = io.BytesIO()
    mask.save(mask_bytes, format="PNG")

    def difference(data: bytes, box: tuple[int, int, int, int]) -> float:
        out = decode(data).convert("RGB")
        return sum(ImageStat.Stat(ImageChops.difference(out.crop(box), source.crop(box))).mean)

    events, result = run(engine, ImageJob(prompt="a cat", width=64, height=64, seed=5, steps=4, strength=0.9,
                                          image=buffer.getvalue()))
    assert result.images == 1 and difference(images(events)[0], (0, 0, 64, 64)) > 30
    events, _ = run(engine, ImageJob(prompt="a cat", width=64, height=64, seed=5, steps=4,
                                     image=buffer.getvalue(), mask=mask_bytes.getvalue()))
    inside = difference(images(events)[0], (20, 20, 44, 44))
    outside = difference(images(events)[0], (0, 0, 8, 64))
    assert inside > 30 and outside == 0


def test_an_undecodable_edit_image_is_a_400(engine: Engine) -> None:
    with pytest.raises(EngineError) as caught:
        run(engine, ImageJob(prompt="a cat", width=64, height=64, image=b"not an image"))
    assert caught.value.status == 400 and "image" in caught.value.message


def _peak(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_the_estimate_covers_the_worker_at_the_largest_size(engine: Engine, plan: LoadPlan) -> None:
    run(engine, ImageJob(prompt="a cat", width=MAX_SIDE, height=MAX_SIDE, seed=1, partial_images=1))
    measured = _peak(engine.pid)  # type: ignore[attr-defined]
    expected = estimate("diffusers", plan.options).total
    print(f"\nworker peak {measured / MIB:.0f} MiB, estimate {expected / MIB:.0f} MiB")
    assert measured <= expected <= 1.6 * measured, (measured / MIB, expected / MIB)
