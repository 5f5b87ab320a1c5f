"""Speech model files: Piper voices, Kokoro models and their voice packs, Silero VAD.

Read once when the catalog describes a model, without loading anything:

* a Piper voice is an ONNX file with its Piper config beside it (`NAME.onnx` and
  `NAME.onnx.json`, as Piper publishes them); the config gives the sample rate,
  the language, the espeak voice and the speakers (a multi-speaker voice lists
  them in `speaker_id_map`; a single-speaker voice has one, named after its
  dataset);
* a Kokoro model is an ONNX file plus a voice pack: a NumPy `.npz` archive (the
  kokoro-onnx `voices-*.bin` files are the same format) whose members are the
  voices, `NAME.npy` each, the first letter of a name saying its language;
* a Silero VAD model is an ONNX file named `silero*vad*.onnx` (the snakers4 export
  with inputs input/state/sr, or the sequence export faster-whisper ships).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lokal.formats.modelfile import ModelFileError

#: Kokoro voice names start with their language's letter (hexgrad's convention).
KOKORO_LANGUAGES = {
    "a": "en-us", "b": "en-gb", "j": "ja", "z": "zh", "e": "es", "f": "fr",
    "h": "hi", "i": "it", "p": "pt-br",
}


@dataclass(frozen=True)
class SpeechFile:
    """What a speech model file holds."""

    kind: str  # "piper", "kokoro" or "silero-vad"
    sample_rate: int = 16000
    voices: tuple[str, ...] = ()
    language: str | None = None  # the voice's language (Piper), e.g. en_US
    voices_path: Path | None = None  # Kokoro: the voice pack
    #: voice name -> its language (Kokoro: from the name's first letter)
    voice_languages: dict[str, str] = field(default_factory=dict)


def piper_config_path(path: Path) -> Path:
    """Where a Piper voice's config is: NAME.onnx.json beside NAME.onnx."""
    return path.with_name(path.name + ".json")


def is_vad_name(path: Path) -> bool:
    lower = path.name.lower()
    return lower.endswith(".onnx") and "silero" in lower and "vad" in lower


def inspect_onnx(path: Path) -> SpeechFile:
    """An ONNX file as a speech model by the files beside it and its name, or
    ModelFileError saying what lokal would need to serve it."""
    if piper_config_path(path).is_file():
        return read_piper(path)
    if is_vad_name(path):
        return SpeechFile(kind="silero-vad", sample_rate=16000)
    raise ModelFileError(
        f"{path.name} is an ONNX file lokal cannot place: a Piper voice needs its config "
        f"{path.name}.json beside it; a Kokoro model needs a YAML config with `backend: kokoro` "
        "and its voice pack in `tts.voices`; a Silero VAD model is named silero_vad*.onnx")


def read_piper(path: Path) -> SpeechFile:
    config_path = piper_config_path(path)
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelFileError(f"{config_path.name} is not a readable Piper voice config: {exc}") from exc
    if not isinstance(config, dict) or not isinstance(config.get("phoneme_id_map"), dict):
        raise ModelFileError(f"{config_path.name} is not a Piper voice config (it has no phoneme_id_map)")
    audio = config.get("audio") if isinstance(config.get("audio"), dict) else {}
    rate = audio.get("sample_rate")
    if not isinstance(rate, int) or rate <= 0:
        raise ModelFileError(f"{config_path.name} gives no audio.sample_rate")
    speakers = config.get("speaker_id_map") or {}
    if isinstance(speakers, dict) and speakers:
        voices = tuple(sorted(speakers, key=lambda name: speakers[name]))
    else:
        voices = (piper_voice_name(path, config),)
    language = config.get("language") if isinstance(config.get("language"), dict) else {}
    code = language.get("code") or (config.get("espeak") or {}).get("voice")
    return SpeechFile(kind="piper", sample_rate=rate, voices=voices,
                      language=str(code) if code else None)


def piper_voice_name(path: Path, config: dict[str, Any]) -> str:
    """The one voice of a single-speaker Piper model: its dataset's name (`joe` for
    en_US-joe-medium), else the file's name without its language and quality."""
    dataset = config.get("dataset")
    if isinstance(dataset, str) and dataset.strip():
        return dataset.strip()
    stem = path.name[: -len(".onnx")] if path.name.lower().endswith(".onnx") else path.stem
    parts = stem.split("-")
    return parts[1] if len(parts) == 3 else stem


def read_voice_pack(path: Path) -> tuple[str, ...]:
    """The voice names in a Kokoro voice pack (an .npz: a zip of NAME.npy members)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n[: -len(".npy")] for n in archive.namelist() if n.endswith(".npy")]
    except (OSError, zipfile.BadZipFile) as exc:
        raise ModelFileError(f"voice pack {path.name} is not a NumPy .npz archive of voices: {exc}") from exc
    if not names:
        raise ModelFileError(f"voice pack {path.name} holds no voices")
    return tuple(sorted(names))


def read_kokoro(path: Path, voices_path: Path) -> SpeechFile:
    if not path.is_file():
        raise ModelFileError(f"model file {path.name} does not exist in the models folder")
    if not voices_path.is_file():
        raise ModelFileError(f"voice pack {voices_path.name} does not exist in the models folder")
    voices = read_voice_pack(voices_path)
    return SpeechFile(kind="kokoro", sample_rate=24000, voices=voices, voices_path=voices_path,
                      voice_languages={v: KOKORO_LANGUAGES.get(v[:1].lower(), "en-us") for v in voices})
