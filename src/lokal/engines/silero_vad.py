"""Silero VAD on onnxruntime: where in a recording someone speaks.

The model scores windows of 512 samples at 16 kHz (with the 64 samples before each as
context) for the probability of speech; segments are the runs above the threshold,
closed after `min_silence_ms` below it and widened by `speech_pad_ms` on each side, as
Silero's own get_speech_timestamps does (and LocalAI's silero-vad backend, with its
defaults: threshold 0.5, 100 ms of silence, 30 ms of padding).

Two exports are read, told apart by their inputs: Silero's own (`input`, `state`,
`sr`: one window per call, the state carried from call to call; snakers4's
`silero_vad.onnx`, what LocalAI installs) and the sequence export faster-whisper ships
(`input` of many windows with their context, `h`, `c`: `faster_whisper/assets/silero_vad_v6.onnx`).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from lokal.engines.base import Engine, LoadOptions, ModelLoadError, SpeechSegment, bad_param

log = logging.getLogger(__name__)

RATE = 16000
WINDOW = 512
CONTEXT = 64


class SileroVadEngine(Engine):
    def __init__(self, options: LoadOptions) -> None:
        try:
            import onnxruntime
        except ImportError as exc:
            raise ModelLoadError(f"{options.model_path.name}: this model needs onnxruntime: "
                                 f"pip install 'lokal[speech]' ({exc})") from exc
        session_options = onnxruntime.SessionOptions()
        session_options.intra_op_num_threads = 1  # a small recurrent model: one thread is fastest
        session_options.inter_op_num_threads = 1
        session_options.log_severity_level = 4
        try:
            self._session = onnxruntime.InferenceSession(str(options.model_path), sess_options=session_options,
                                                         providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - any loader failure is the user's to read
            raise ModelLoadError(f"{options.model_path.name} failed to load: {exc}") from exc
        names = {i.name for i in self._session.get_inputs()}
        if {"input", "h", "c"} <= names:
            self._kind = "sequence"
        elif {"input", "state"} <= names:
            self._kind = "stateful"
            self._takes_rate = "sr" in names
        else:
            raise ModelLoadError(f"{options.model_path.name} is not a Silero VAD model lokal reads (its inputs "
                                 f"are {', '.join(sorted(names))}; expected input/state/sr or input/h/c)")
        self._lock = threading.Lock()
        log.info("loaded %s (silero-vad, %s export)", options.model_path.name, self._kind)

    def detect_speech(self, audio: bytes, *, rate: int = RATE, threshold: float = 0.5,
                      min_silence_ms: int = 100, speech_pad_ms: int = 30) -> list[SpeechSegment]:
        import numpy as np

        if rate != RATE:
            raise bad_param(f"Silero VAD hears 16 kHz audio, not {rate} Hz", "sample_rate")
        if not 0.0 < threshold < 1.0:
            raise bad_param("threshold must be between 0 and 1", "threshold")
        samples = np.frombuffer(audio, dtype="<f4").astype(np.float32)
        if samples.size == 0:
            return []
        padded = np.pad(samples, (0, (-samples.size) % WINDOW))
        with self._lock:
            probs = self._probabilities(padded)
        return _segments(probs, samples.size, threshold, min_silence_ms, speech_pad_ms)

    def _probabilities(self, audio: Any) -> Any:
        import numpy as np

        windows = audio.reshape(-1, WINDOW)
        context = np.zeros((windows.shape[0], CONTEXT), dtype=np.float32)
        context[1:] = windows[:-1, -CONTEXT:]
        batch = np.concatenate([context, windows], axis=1)
        if self._kind == "sequence":
            h = np.zeros((1, 1, 128), dtype=np.float32)
            c = np.zeros((1, 1, 128), dtype=np.float32)
            out = []
            for start in range(0, batch.shape[0], 10000):
                probs, h, c = self._session.run(None, {"input": batch[start:start + 10000], "h": h, "c": c})
                out.append(np.asarray(probs).reshape(-1))
            return np.concatenate(out)
        state = np.zeros((2, 1, 128), dtype=np.float32)
        out = np.empty(batch.shape[0], dtype=np.float32)
        rate = np.array(RATE, dtype=np.int64)
        for i in range(batch.shape[0]):
            feed = {"input": batch[i:i + 1], "state": state}
            if self._takes_rate:
                feed["sr"] = rate
            prob, state = self._session.run(None, feed)
            out[i] = float(np.asarray(prob).reshape(-1)[0])
        return out

    def close(self) -> None:
        self.__dict__.pop("_session", None)


def _segments(probs: Any, length: int, threshold: float, min_silence_ms: int, speech_pad_ms: int) -> list[SpeechSegment]:
    """Speech runs in the per-window probabilities, as seconds."""
    low = max(threshold - 0.15, 0.01)
    min_silence = RATE * min_silence_ms // 1000
    pad = RATE * speech_pad_ms // 1000
    spans: list[list[int]] = []
    start: int | None = None
    silence_from: int | None = None
    for i, prob in enumerate(probs):
        at = i * WINDOW
        if prob >= threshold:
            silence_from = None
            if start is None:
                start = at
        elif start is not None and prob < low:
            if silence_from is None:
                silence_from = at
            if at + WINDOW - silence_from >= min_silence:
                spans.append([start, silence_from])
                start = silence_from = None
    if start is not None:
        spans.append([start, length])
    for index, span in enumerate(spans):
        span[0] = max(0, span[0] - pad)
        span[1] = min(length, span[1] + pad)
        if index and span[0] < spans[index - 1][1]:  # the pads met: split the gap between them
            middle = (spans[index - 1][1] - pad + span[0] + pad) // 2
            spans[index - 1][1] = span[0] = middle
    return [SpeechSegment(round(a / RATE, 3), round(b / RATE, 3)) for a, b in spans if b > a]
