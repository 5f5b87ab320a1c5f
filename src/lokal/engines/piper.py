"""Piper text to speech (the `piper-tts` package: VITS voices in ONNX, espeak-ng phonemes).

An optional extra: `pip install 'lokal[speech]'`. A model is a Piper voice: the
`.onnx` file and its `.onnx.json` config beside it. Piper phonemizes the whole text
with espeak-ng (fast), splits it into sentences and synthesises them one by one:
each sentence's audio goes to the sink as soon as it is made, so the first audio
of a long text leaves after its first sentence, and a sink that returns True (the
client went away) stops the synthesis before the next one.
"""

from __future__ import annotations

import json
import logging
import threading
import time

from lokal.engines.base import (AudioChunk, AudioSink, Engine, EngineError, LoadOptions, ModelLoadError, Speech,
                                bad_param)
from lokal.formats.modelfile import ModelFileError
from lokal.formats.speechfile import piper_config_path, read_piper

log = logging.getLogger(__name__)

EXTRA_HINT = "this model needs the speech engines: pip install 'lokal[speech]' (piper-tts, onnxruntime)"


def unknown_voice(voice: str, voices: tuple[str, ...]) -> EngineError:
    return bad_param(f"Unknown voice {voice!r}: this model's voices are {', '.join(voices)}.", "voice")


def same_language(asked: str, spoken: str) -> bool:
    """Whether a request's language (en, en-US, en_us) is the voice's (en_US)."""
    def base(code: str) -> str:
        return code.strip().lower().replace("_", "-").split("-")[0]
    return base(asked) == base(spoken)


class PiperEngine(Engine):
    """One Piper voice, synthesising one text at a time with the threads it was given."""

    def __init__(self, options: LoadOptions) -> None:
        try:
            import onnxruntime
            from piper import PiperVoice
            from piper.config import PiperConfig
        except ImportError as exc:
            raise ModelLoadError(f"{options.model_path.name}: {EXTRA_HINT} ({exc})") from exc
        path = options.model_path
        try:
            self.info = read_piper(path)
            config = json.loads(piper_config_path(path).read_text(encoding="utf-8"))
        except (ModelFileError, OSError, ValueError) as exc:
            raise ModelLoadError(f"{path.name}: {exc}") from exc
        session_options = onnxruntime.SessionOptions()
        session_options.intra_op_num_threads = options.threads
        session_options.inter_op_num_threads = 1
        try:
            session = onnxruntime.InferenceSession(str(path), sess_options=session_options,
                                                   providers=["CPUExecutionProvider"])
            self._voice = PiperVoice(config=PiperConfig.from_dict(config), session=session)
        except Exception as exc:  # noqa: BLE001 - any loader failure is the user's to read
            raise ModelLoadError(f"{path.name} failed to load as a Piper voice: {exc}") from exc
        self._speakers = dict(config.get("speaker_id_map") or {})
        self._lock = threading.Lock()  # the session already uses every thread it was given
        self.options = options
        # Phonemizing once loads espeak-ng and its dictionary now, not in the first request.
        self._voice.phonemize("ready")
        log.info("loaded %s (piper, %d Hz, %s, voices: %s)", path.name, self.info.sample_rate,
                 self.info.language, ", ".join(self.info.voices))

    @property
    def voices(self) -> tuple[str, ...]:
        return self.info.voices

    def speak(self, text: str, *, voice: str, speed: float = 1.0, language: str | None = None,
              sink: AudioSink) -> Speech:
        from piper.config import SynthesisConfig

        if voice not in self.info.voices:
            raise unknown_voice(voice, self.info.voices)
        if language and self.info.language and not same_language(language, self.info.language):
            raise bad_param(f"Unsupported language {language!r}: this voice speaks {self.info.language}.",
                            "language")
        if not 0.25 <= speed <= 4.0:
            raise bad_param(f"speed must be between 0.25 and 4.0, not {speed}", "speed")
        config = self._voice.config
        syn = SynthesisConfig(speaker_id=self._speakers.get(voice),
                              length_scale=config.length_scale / speed)
        rate = self.info.sample_rate
        result = Speech(rate=rate)
        started = time.monotonic()
        with self._lock:
            for index, chunk in enumerate(self._voice.synthesize(text, syn)):
                pcm = chunk.audio_int16_bytes
                result.samples += len(pcm) // 2
                result.sentences += 1
                if sink(AudioChunk(pcm, rate, index, phonemes="".join(chunk.phonemes))):
                    result.stopped = True
                    break
        seconds = result.samples / rate
        log.info("spoke %d sentence(s), %.1fs of audio in %.2fs%s", result.sentences, seconds,
                 time.monotonic() - started, " (stopped)" if result.stopped else "")
        return result

    def close(self) -> None:
        self.__dict__.pop("_voice", None)
