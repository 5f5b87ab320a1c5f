"""LocalAI's `stablediffusion-ggml` backend: stable-diffusion.cpp through stable-diffusion-cpp-python.

The seam only, for now. The catalog already reads a config with
`backend: stablediffusion-ggml` as an image model (`lokal.formats.diffusion`, kind
`sd-cpp`: one GGUF, safetensors or ckpt file, LocalAI's `options:` list for its extra
files and sampler), the planner routes it here with its `DiffusionOptions`, the memory
budget counts it, and the routes, queueing and cancellation are the diffusers engine's.
What is missing is this class's `generate_image`: stable-diffusion-cpp-python 0.4.7 has
no wheel and its source build (CMake, ggml and stable-diffusion.cpp, -march=native) did
not finish within 25 minutes on the two shared cores it was tried on, so no code here
could be run against it. Until then a model configured for it fails to load with that
reason, never silently served by another engine.
"""

from __future__ import annotations

from lokal.engines.base import Engine, LoadOptions, ModelLoadError

PACKAGE_HINT = ("the stablediffusion-ggml backend needs stable-diffusion-cpp-python, which builds "
                "from source (pip install stable-diffusion-cpp-python; a C++ toolchain and CMake)")


class StableDiffusionCppEngine(Engine):
    """A stable-diffusion.cpp model: refused with the reason until the engine is written."""

    def __init__(self, options: LoadOptions) -> None:
        try:
            import stable_diffusion_cpp  # noqa: F401 - only whether it is there
        except ImportError as exc:
            raise ModelLoadError(f"{options.model_path.name}: {PACKAGE_HINT} ({exc})") from exc
        raise ModelLoadError(f"{options.model_path.name}: lokal's stablediffusion-ggml engine is not "
                             "written yet (stable-diffusion-cpp-python is installed, but lokal has no "
                             "tested code for it); serve the model's diffusers release with "
                             "backend: diffusers instead")

    def close(self) -> None:  # pragma: no cover - never constructed
        pass
