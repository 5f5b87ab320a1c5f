"""Whisper speech-to-text through faster-whisper (CTranslate2) on the CPU.

An optional extra: `pip install 'lokal[whisper]'`. Without it, a Whisper model
fails to load with a message naming the extra. A model is a CTranslate2 Whisper
folder (model.bin, config.json, tokenizer.json / vocabulary.txt), as
`ct2-transformers-converter` writes it.

Audio arrives as the bytes of an uploaded file and is decoded in memory by PyAV
(FFmpeg's libraries in its wheel, no system ffmpeg): MP3, WAV, M4A/MP4/AAC,
OGG (Vorbis, Opus), FLAC, WebM and whatever else FFmpeg reads.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from typing import Any

from lokal.engines.base import Engine, EngineError, LoadOptions, ModelLoadError, Transcription

log = logging.getLogger(__name__)

EXTRA_HINT = ("this model needs the whisper engine: pip install 'lokal[whisper]' "
              "(faster-whisper: CTranslate2 + PyAV)")

SUPPORTED = "supported: mp3, wav, m4a, mp4, ogg, opus, flac, webm, aac"

SAMPLE_RATE = 16000  # what every Whisper model hears

# Whisper's languages in its token order, as OpenAI names them ("language" in
# verbose_json is the name, the request's "language" an ISO-639-1 code).
_LANGUAGES = (
    "en english|zh chinese|de german|es spanish|ru russian|ko korean|fr french|ja japanese|"
    "pt portuguese|tr turkish|pl polish|ca catalan|nl dutch|ar arabic|sv swedish|it italian|"
    "id indonesian|hi hindi|fi finnish|vi vietnamese|he hebrew|uk ukrainian|el greek|ms malay|"
    "cs czech|ro romanian|da danish|hu hungarian|ta tamil|no norwegian|th thai|ur urdu|"
    "hr croatian|bg bulgarian|lt lithuanian|la latin|mi maori|ml malayalam|cy welsh|sk slovak|"
    "te telugu|fa persian|lv latvian|bn bengali|sr serbian|az azerbaijani|sl slovenian|"
    "kn kannada|et estonian|mk macedonian|br breton|eu basque|is icelandic|hy armenian|"
    "ne nepali|mn mongolian|bs bosnian|kk kazakh|sq albanian|sw swahili|gl galician|mr marathi|"
    "pa punjabi|si sinhala|km khmer|sn shona|yo yoruba|so somali|af afrikaans|oc occitan|"
    "ka georgian|be belarusian|tg tajik|sd sindhi|gu gujarati|am amharic|yi yiddish|lo lao|"
    "uz uzbek|fo faroese|ht haitian creole|ps pashto|tk turkmen|nn nynorsk|mt maltese|"
    "sa sanskrit|lb luxembourgish|my myanmar|bo tibetan|tl tagalog|mg malagasy|as assamese|"
    "tt tatar|haw hawaiian|ln lingala|ha hausa|ba bashkir|jw javanese|su sundanese|yue cantonese"
)
LANGUAGES: dict[str, str] = dict(item.split(" ", 1) for item in _LANGUAGES.split("|"))
_CODES = {name: code for code, name in LANGUAGES.items()}
_CODES.update({"burmese": "my", "valencian": "ca", "flemish": "nl", "haitian": "ht",
               "letzeburgesch": "lb", "pushto": "ps", "panjabi": "pa", "moldavian": "ro",
               "moldovan": "ro", "sinhalese": "si", "castilian": "es", "mandarin": "zh"})


def language_code(language: str | None) -> str | None:
    """An ISO-639-1 code (or a Whisper language name) as Whisper's code; None: detect."""
    if language is None or not language.strip():
        return None
    value = language.strip().lower().replace("_", "-")
    if value in LANGUAGES:
        return value
    if value in _CODES:
        return _CODES[value]
    base = value.split("-")[0]  # en-US, pt-BR
    if base in LANGUAGES:
        return base
    raise EngineError(400, f"Unsupported language {language!r}: give an ISO-639-1 code such as "
                           "'en', 'de' or 'fr' (or leave it out to detect the language).")


def model_language(language: str | None, multilingual: bool, model_name: str) -> str | None:
    """The code a model transcribes in: the asked language's, or None to detect; an
    English-only model asked for another language transcribes as English (with a warning)."""
    code = language_code(language)
    if code is not None and code != "en" and not multilingual:
        log.warning("%s is an English-only model: transcribing as English, not %r", model_name, language)
        return None
    return code


def _looks_like_text(data: bytes) -> bool:
    head = data[:512]
    for cut in range(4):  # the 512th byte may split a UTF-8 character
        try:
            text = head[:len(head) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        return bool(text.strip()) and all(c.isprintable() or c in "\r\n\t" for c in text)
    return False


def _undecodable(reason: str, data: bytes) -> EngineError:
    hint = " (the file looks like text, not audio)" if _looks_like_text(data) else ""
    return EngineError(400, f"Invalid file: could not decode the audio file: {reason}{hint}; "
                            f"{SUPPORTED} (anything FFmpeg reads).")


def decode_audio(data: bytes, rate: int = SAMPLE_RATE) -> Any:
    """The first audio stream of a file's bytes as mono float32 samples at rate."""
    import av
    import numpy as np

    if not data:
        raise EngineError(400, "Invalid file: the audio file is empty.")
    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, OSError, ValueError, EOFError) as exc:
        raise _undecodable(getattr(exc, "strerror", None) or str(exc), data) from exc
    chunks: list[Any] = []
    with container:
        if not container.streams.audio:
            kind = container.format.long_name or container.format.name
            raise _undecodable(f"it holds no audio stream ({kind})", data)
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
        try:
            for frame in container.decode(stream):
                chunks.extend(f.to_ndarray() for f in resampler.resample(frame))
            chunks.extend(f.to_ndarray() for f in resampler.resample(None))
        except (av.error.FFmpegError, OSError, ValueError, EOFError) as exc:
            if not chunks:
                raise _undecodable(getattr(exc, "strerror", None) or str(exc), data) from exc
            # A damaged or cut-off tail: keep what decoded, as players do.
            log.warning("audio file damaged after %.1fs; transcribing that much: %s",
                        sum(c.shape[-1] for c in chunks) / rate, exc)
    if not chunks:
        raise _undecodable("it holds no audio samples", data)
    samples = np.concatenate([c.reshape(-1) for c in chunks]).astype(np.float32)
    return samples / 32768.0


def _temperatures(temperature: float) -> tuple[float, ...]:
    """From the requested temperature up to 1.0 in 0.2 steps: Whisper's fallback when
    a decode looks like a failure (repetitive or unlikely), as OpenAI documents it."""
    temps = [round(temperature + 0.2 * i, 2) for i in range(6)]
    return tuple(t for t in temps if t <= 1.0) or (1.0,)


def prepare() -> None:
    """Import what a load will need (a spare worker does this before it is given a model)."""
    import ctranslate2  # noqa: F401
    import faster_whisper  # noqa: F401


class WhisperEngine(Engine):
    """A CTranslate2 Whisper model folder, transcribing one file at a time."""


    def __init__(self, options: LoadOptions) -> None:
        try:
            import ctranslate2
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise ModelLoadError(f"{options.model_path.name}: {EXTRA_HINT} ({exc})") from exc
        # int8 weights: measured fastest on CPU here, and as accurate as float32.
        supported = ctranslate2.get_supported_compute_types("cpu")
        compute_type = "int8" if "int8" in supported else "default"
        try:
            self._model = WhisperModel(str(options.model_path), device="cpu",
                                       compute_type=compute_type, cpu_threads=options.threads,
                                       num_workers=1, local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - any loader failure is the user's to read
            raise ModelLoadError(f"{options.model_path.name} failed to load: {exc}") from exc
        logging.getLogger("faster_whisper").setLevel(logging.WARNING)  # lokal logs its own line
        self.multilingual = bool(self._model.model.is_multilingual)
        # The model already uses every thread it was given: one transcription at a time.
        self._lock = threading.Lock()
        self.options = options
        log.info("loaded %s (whisper, %s, %s)", options.model_path.name,
                 "multilingual" if self.multilingual else "English-only", compute_type)

    def transcribe(self, audio: bytes, *, language: str | None = None, prompt: str | None = None,
                   temperature: float = 0.0, vad_filter: bool = False) -> Transcription:
        code = model_language(language, self.multilingual, self.options.model_path.name)
        samples = decode_audio(audio)  # outside the lock: a bad file fails at once
        started = time.monotonic()
        with self._lock:
            try:
                pieces, info = self._model.transcribe(
                    samples, language=code, task="transcribe", initial_prompt=prompt or None,
                    temperature=_temperatures(temperature), beam_size=5, vad_filter=vad_filter)
                segments = list(pieces)  # the decoding runs while this is consumed
            except EngineError:
                raise
            except Exception as exc:  # noqa: BLE001 - an engine failure, not the client's
                raise EngineError(500, f"transcription failed: {exc}") from exc
        out = [{
            "id": index,
            "seek": int(seg.seek),
            "start": round(float(seg.start), 3),
            "end": round(float(seg.end), 3),
            "text": seg.text,
            "tokens": list(seg.tokens),
            "temperature": float(seg.temperature if seg.temperature is not None else 0.0),
            "avg_logprob": float(seg.avg_logprob),
            "compression_ratio": float(seg.compression_ratio),
            "no_speech_prob": float(seg.no_speech_prob),
        } for index, seg in enumerate(segments)]
        text = "".join(seg.text for seg in segments).strip()
        duration = float(info.duration)
        log.info("transcribed %.1fs of audio in %.2fs", duration, time.monotonic() - started)
        return Transcription(text=text, language=LANGUAGES.get(info.language, info.language),
                             duration=round(duration, 3), segments=out)

    def close(self) -> None:
        self.__dict__.pop("_model", None)
