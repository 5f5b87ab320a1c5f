"""Whisper speech-to-text through whisper.cpp (pywhispercpp), for GGML `.bin` models.

LocalAI's `whisper` backend is whisper.cpp, and its gallery's Whisper entries are
whisper.cpp GGML files (`ggml-base.en.bin`, quantized `-q5_1` ones ...), which
faster-whisper (lokal's engine for CTranslate2 folders) cannot read. This engine
serves them. An optional extra, as the other Whisper engine: `pip install
'lokal[whisper]'`.

Audio is decoded in memory by the same PyAV reader as the faster-whisper engine,
so both take the same formats and refuse bad files the same way. pywhispercpp's
`Model` downloads a model when given a name rather than a file: this engine only
ever gives it the path of a file the catalog found in the models folder.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from typing import Any

from lokal.engines.base import Engine, EngineError, LoadOptions, ModelLoadError, Transcription
from lokal.engines.whisper import EXTRA_HINT, LANGUAGES, decode_audio, model_language

log = logging.getLogger(__name__)


def whisper_ggml_vocab(path: Any) -> int:
    """The vocabulary size in a whisper.cpp GGML header (the first value after the magic)."""
    with open(path, "rb") as f:
        head = f.read(8)
    return struct.unpack("<i", head[4:8])[0] if len(head) == 8 else 0


class WhisperCppEngine(Engine):
    """A whisper.cpp GGML model, transcribing one file at a time."""

    def __init__(self, options: LoadOptions) -> None:
        if not options.model_path.is_file():  # never let pywhispercpp fetch a model by name
            raise ModelLoadError(f"{options.model_path.name} is not a file in the models folder")
        try:
            from pywhispercpp.model import Model
        except ImportError as exc:
            raise ModelLoadError(f"{options.model_path.name}: {EXTRA_HINT}; whisper.cpp models need "
                                 f"pywhispercpp ({exc})") from exc
        try:
            self._model = Model(str(options.model_path), n_threads=options.threads, print_progress=False,
                                print_realtime=False, print_timestamps=False,
                                redirect_whispercpp_logs_to=None)
        except Exception as exc:  # noqa: BLE001 - the loader's words are the user's to read
            raise ModelLoadError(f"{options.model_path.name} failed to load: {exc}") from exc
        self.multilingual = whisper_ggml_vocab(options.model_path) >= 51865  # whisper.cpp's own test
        self._lock = threading.Lock()
        self.options = options
        log.info("loaded %s (whisper.cpp, %s)", options.model_path.name,
                 "multilingual" if self.multilingual else "English-only")

    def transcribe(self, audio: bytes, *, language: str | None = None, prompt: str | None = None,
                   temperature: float = 0.0) -> Transcription:
        code = model_language(language, self.multilingual, self.options.model_path.name)
        samples = decode_audio(audio)  # outside the lock: a bad file fails at once
        params: dict[str, Any] = {"temperature": float(temperature)}
        if prompt:
            params["initial_prompt"] = prompt
        started = time.monotonic()
        with self._lock:
            try:
                if code is None and self.multilingual:
                    (detected, _), _ = self._model.auto_detect_language(samples)
                    code = detected
                params["language"] = code or "en"
                segments = self._model.transcribe(samples, **params)
            except EngineError:
                raise
            except Exception as exc:  # noqa: BLE001 - an engine failure, not the client's
                raise EngineError(500, f"transcription failed: {exc}") from exc
        out = [{"id": index, "seek": 0, "start": round(seg.t0 / 100, 3), "end": round(seg.t1 / 100, 3),
                "text": seg.text, "tokens": [], "temperature": float(temperature),
                "avg_logprob": 0.0, "compression_ratio": 0.0, "no_speech_prob": 0.0}
               for index, seg in enumerate(segments)]
        text = "".join(seg.text for seg in segments).strip()
        duration = round(len(samples) / 16000, 3)
        log.info("transcribed %.1fs of audio in %.2fs", duration, time.monotonic() - started)
        return Transcription(text=text, language=LANGUAGES.get(code or "en", code), duration=duration,
                             segments=out)

    def close(self) -> None:
        self.__dict__.pop("_model", None)
