"""The vision server the image tests share (tests/api/test_vision*.py): one start per session.

SmolLM2 twice: as `eyes` with a tiny random projector built here
(tests/fixtures/tiny_vision.py), and as `plain`, a text model, so that refusals
need no server of their own.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LokalServer, place_model
from tests.fixtures import tiny_vision

VISION = "eyes"
PLAIN = "plain"


@pytest.fixture(scope="session")
def projector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    missing = [m for m in tiny_vision.REQUIRED if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"building the test projector needs {', '.join(missing)} (lokal[convert])")
    return tiny_vision.build(tmp_path_factory.mktemp("vision-build") / "mmproj-tiny.gguf")


@pytest.fixture(scope="session")
def vision_server(projector: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LokalServer]:
    models = tmp_path_factory.mktemp("vision") / "models"
    place_model(models, "smollm2.gguf")
    (models / "mmproj-tiny.gguf").hardlink_to(projector)
    (models / f"{VISION}.yaml").write_text(
        f"name: {VISION}\nparameters:\n  model: smollm2.gguf\n  temperature: 0\nmmproj: mmproj-tiny.gguf\n")
    (models / f"{PLAIN}.yaml").write_text(
        f"name: {PLAIN}\nparameters:\n  model: smollm2.gguf\n  temperature: 0\n")
    with LokalServer(models, "--preload-models", VISION, "--parallel-requests", "1") as server:
        server.wait_ready(120)
        yield server
