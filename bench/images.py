"""Image generation speed: seconds per denoising step through lokal against the same
pipeline called directly.

Model: a randomly initialised Stable Diffusion pipeline built by
tests/fixtures/tiny_diffusion.py at `--scale bench` (a UNet of 128/256/256 channels with
cross-attention, an 8x VAE, a small CLIP text encoder): no weights can be downloaded
here, and the speed of a step depends on the shapes, not on what the weights are.
`--model FOLDER` takes a real diffusers folder instead.

Systems, one at a time (never two at once: they would fight over the cores):
  direct   diffusers in a separate Python process, the pipeline called as lokal calls it
           (float32, torch threads = --threads, inference mode, a step callback)
  lokal    `python -m lokal serve`, the model preloaded, `POST /v1/images/generations`
           with `stream: true`; steps are timed from its progress events as they arrive

A run makes one image of --size pixels in --steps steps; seconds per step is the time
from the first step's end to the last one's over the steps between (no text encoding,
no VAE decode, no HTTP set-up in it), the median over --repeats runs after a warm-up.
Also shown: the whole request against the whole direct call. Target: lokal/direct
(direct seconds per step over lokal's) >= 0.95.

    python bench/images.py
    python bench/images.py --steps 20 --size 512 --model /models/stable-diffusion-v1-5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

import _http  # bench/_http.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.95

DIRECT = r"""
import json, statistics, sys, time
import torch
from diffusers import DiffusionPipeline
folder, threads, size, steps, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
pipe.set_progress_bar_config(disable=True)
per_step, whole = [], []
for run in range(repeats + 1):
    stamps = []
    def on_step(p, i, t, values):
        stamps.append(time.perf_counter())
        return values
    started = time.perf_counter()
    with torch.inference_mode():
        pipe("a lighthouse on a cliff", num_inference_steps=steps, height=size, width=size,
             generator=torch.Generator("cpu").manual_seed(run), callback_on_step_end=on_step,
             callback_on_step_end_tensor_inputs=["latents"])
    if run:  # the first run warms up
        whole.append(time.perf_counter() - started)
        per_step.append((stamps[-1] - stamps[0]) / (len(stamps) - 1))
print(json.dumps({"per_step": statistics.median(per_step), "whole": statistics.median(whole)}))
"""


def direct(folder: Path, threads: int, size: int, steps: int, repeats: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", DIRECT, str(folder), str(threads), str(size), str(steps),
                          str(repeats)], capture_output=True, text=True, check=False,
                         env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if out.returncode != 0:
        raise RuntimeError(f"the direct run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def lokal(folder: Path, threads: int, size: int, steps: int, repeats: int, work: Path) -> dict[str, float]:
    models = work / "models"
    models.mkdir()
    shutil.copytree(folder, models / folder.name, copy_function=_http.link_or_copy)  # no symlinks out
    (models / "bench.yaml").write_text(f"name: bench\nbackend: diffusers\nparameters:\n  model: {folder.name}\n")
    per_step, whole = [], []
    with _http.serve(models, work / "lokal.log", "--threads", str(threads), "--image-max-side", str(size),
                     "--preload-models", "bench", timeout=600) as (port, _):
        for run in range(repeats + 1):
            stamps: list[float] = []
            body = {"model": "bench", "prompt": "a lighthouse on a cliff", "size": f"{size}x{size}",
                    "step": steps, "seed": run, "stream": True, "response_format": "b64_json"}
            started = time.perf_counter()
            with httpx.stream("POST", f"http://{_http.HOST}:{port}/v1/images/generations", json=body,
                              timeout=3600) as response:
                response.raise_for_status()
                for line in response.iter_lines():
                    if line.startswith("data:") and '"image_generation.progress"' in line:
                        stamps.append(time.perf_counter())
            if run:
                whole.append(time.perf_counter() - started)
                per_step.append((stamps[-1] - stamps[0]) / (len(stamps) - 1))
    return {"per_step": statistics.median(per_step), "whole": statistics.median(whole)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a diffusers folder (default: the bench-scale random pipeline)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lokal-bench-images-") as temporary:
        work = Path(temporary)
        folder = args.model
        if folder is None:
            sys.path.insert(0, str(ROOT))
            from tests.fixtures import tiny_diffusion

            print("building the bench pipeline (random weights)...", flush=True)
            tiny_diffusion.build(work / "build", scale="bench")
            folder = work / "build" / tiny_diffusion.NAME
        folder = folder.resolve()
        print(f"{folder.name}: {args.size}x{args.size}, {args.steps} steps, {args.threads} threads, "
              f"median of {args.repeats}", flush=True)
        results: dict[str, Any] = {"direct": direct(folder, args.threads, args.size, args.steps, args.repeats)}
        print(f"direct: {results['direct']['per_step']:.3f} s/step, {results['direct']['whole']:.2f} s/image",
              flush=True)
        results["lokal"] = lokal(folder, args.threads, args.size, args.steps, args.repeats, work)
        print(f"lokal:  {results['lokal']['per_step']:.3f} s/step, {results['lokal']['whole']:.2f} s/image",
              flush=True)
    ratio = results["direct"]["per_step"] / results["lokal"]["per_step"]
    whole = results["direct"]["whole"] / results["lokal"]["whole"]
    results.update(ratio_per_step=ratio, ratio_whole=whole, target=TARGET)
    print(f"lokal/direct per step: {ratio:.3f}x (target >= {TARGET}x: {'met' if ratio >= TARGET else 'NOT met'}); "
          f"whole image: {whole:.3f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
