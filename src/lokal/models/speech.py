"""Speech models in the catalog: what a TTS or VAD model is, and its config's speech settings.

The catalog calls `describe` for every model file (one place): an ONNX file, or a
config naming the piper, kokoro or silero-vad backend, is described here (its kind,
tasks and voices), everything else is left to the model-file reader. A config's
speech settings are LocalAI's `tts: {voice: ...}` (the default voice) plus lokal's
`tts.voices` (a Kokoro voice pack in the models folder) and `tts.language`, and
LocalAI's kokoro option `lang_code:X` (hexgrad's one-letter language code).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lokal.formats.modelfile import ModelFile, ModelFileError
from lokal.formats.speechfile import SpeechFile, inspect_onnx, read_kokoro

#: config fields read here (beside ModelConfig's own): LocalAI's `tts` and `options`
CONFIG_FIELDS = ("tts", "options")

#: engine -> the tasks its models serve
SPEECH_TASKS = {"piper": frozenset({"speak"}), "kokoro": frozenset({"speak"}),
                "silero-vad": frozenset({"vad"})}


@dataclass(frozen=True)
class TTSConfig:
    voice: str | None = None  # the default voice
    voices: str | None = None  # Kokoro: the voice pack, relative to the models folder
    language: str | None = None  # the default language


def tts_config(config: Any) -> TTSConfig:
    """The speech settings of a model config (a `ModelConfig`; None: none)."""
    extra = (getattr(config, "model_extra", None) or {}) if config is not None else {}
    tts = extra.get("tts") if isinstance(extra.get("tts"), dict) else {}
    language = tts.get("language")
    options = extra.get("options")
    if language is None and isinstance(options, list):
        for option in options:
            key, _, value = str(option).partition(":")
            if key.strip() == "lang_code" and value.strip():
                language = value.strip()

    def text(value: Any) -> str | None:
        return str(value).strip() or None if value is not None else None

    return TTSConfig(voice=text(tts.get("voice")), voices=text(tts.get("voices")), language=text(language))


def describe(model_path: Path, engine: str | None, voices_path: Path | None) -> ModelFile | None:
    """The model file of a speech model (kind piper, kokoro or silero-vad, with its
    `speech` description); None when it is not one. ModelFileError says why a speech
    model cannot be served."""
    speech: SpeechFile
    if engine == "kokoro":
        if voices_path is None:
            raise ModelFileError("backend kokoro needs its voice pack: set `tts: {voices: FILE.npz}` "
                                 "(a voices .npz or kokoro-onnx voices-*.bin in the models folder)")
        speech = read_kokoro(model_path, voices_path)
    elif engine == "silero-vad":
        speech = SpeechFile(kind="silero-vad")
    elif engine == "piper" or (engine is None and model_path.suffix.lower() == ".onnx"):
        if model_path.suffix.lower() != ".onnx":
            raise ModelFileError(f"{model_path.name} is not a Piper voice (an .onnx file with its .onnx.json)")
        speech = inspect_onnx(model_path)
    else:
        return None
    return ModelFile(kind=speech.kind, speech=speech)


def tasks_of(model_file: ModelFile) -> frozenset[str]:
    return SPEECH_TASKS.get(model_file.kind, frozenset())
