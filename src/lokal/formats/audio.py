"""Speech audio out: 16-bit mono PCM into wav, pcm, mp3, opus, aac or flac, chunk by chunk.

Engines hand over signed 16-bit little-endian mono samples at their own rate; an
`AudioEncoder` turns each chunk into bytes of the asked format as it arrives, so a
streamed answer plays while the rest is being synthesised. The codecs and containers
are FFmpeg's, through PyAV (installed with faster-whisper): MP3 (LAME), Ogg Opus,
AAC in ADTS, FLAC. Only the WAV header is written here (a streamed WAV says "length
unknown", as OpenAI's does; a whole one has its exact sizes) and raw PCM has none.

Rates: an encoder keeps the engine's rate unless asked for another (`rate=`) or the
codec cannot take it: Opus runs at 8, 12, 16, 24 or 48 kHz (48 kHz, what every Opus
decoder outputs, unless the engine's rate is one of the others).
"""

from __future__ import annotations

import struct
from typing import Any

FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")

#: Content-Type of each format, as OpenAI's speech API answers it.
MEDIA_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}

# format -> (container, codec)
_CODECS = {
    "mp3": ("mp3", "libmp3lame"),
    "opus": ("ogg", "libopus"),
    "aac": ("adts", "aac"),
    "flac": ("flac", "flac"),
}
_OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
_MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
_AAC_RATES = (7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
#: bit rates (bits/s) where the request names none (OpenAI-like sizes for speech)
_BIT_RATES = {"mp3": 128_000, "opus": 64_000, "aac": 96_000}


class AudioFormatError(ValueError):
    """A format or rate the encoder cannot produce; the message says what it can."""


def wav_header(rate: int, data_bytes: int | None = None, *, channels: int = 1, width: int = 2) -> bytes:
    """A canonical 44-byte RIFF/WAVE header for PCM; data_bytes None: length unknown
    (both sizes 0xFFFFFFFF, which players read as 'until the stream ends')."""
    if data_bytes is None:
        riff = data = 0xFFFFFFFF
    else:
        data = data_bytes
        riff = min(0xFFFFFFFF, 36 + data_bytes)
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * channels * width,
                                    channels * width, width * 8)
            + b"data" + struct.pack("<I", data))


def output_rate(fmt: str, rate: int, wanted: int | None = None) -> int:
    """The rate an encoder of fmt writes for input at rate (and an asked-for rate)."""
    target = wanted or rate
    if fmt == "opus" and target not in _OPUS_RATES:
        if wanted is not None:
            raise AudioFormatError(f"Opus runs at {', '.join(map(str, _OPUS_RATES))} Hz, not {wanted}")
        return 48000
    if fmt == "mp3" and target not in _MP3_RATES:
        if wanted is not None:
            raise AudioFormatError(f"MP3 runs at {', '.join(map(str, _MP3_RATES))} Hz, not {wanted}")
        return 24000 if target < 24000 else 48000
    if fmt == "aac" and target not in _AAC_RATES:
        if wanted is not None:
            raise AudioFormatError(f"AAC runs at {', '.join(map(str, _AAC_RATES))} Hz, not {wanted}")
        return 48000
    return target


class _Buffer:
    """A write-only, non-seekable file for the muxer: what it wrote is taken after each step."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: Any) -> int:
        self.data += data
        return len(data)

    def take(self) -> bytes:
        out = bytes(self.data)
        self.data.clear()
        return out


class AudioEncoder:
    """Encodes 16-bit mono PCM chunks at `in_rate` into `fmt`, returning bytes as they are made.

    `streamed`: a WAV gets a length-unknown header at once; otherwise `feed` keeps the
    samples and `finish` returns the whole file with exact sizes. `rate` asks for an
    output rate (resampled); `bitrate` (bits/s) applies to mp3, opus and aac."""

    def __init__(self, fmt: str, in_rate: int, *, rate: int | None = None, bitrate: int | None = None,
                 streamed: bool = True) -> None:
        if fmt not in FORMATS:
            raise AudioFormatError(f"unknown audio format {fmt!r}; use one of {', '.join(FORMATS)}")
        self.format = fmt
        self.in_rate = in_rate
        self.rate = output_rate(fmt, in_rate, rate)
        self.streamed = streamed
        self.media_type = MEDIA_TYPES[fmt]
        self.samples = 0  # input samples fed
        self._pending = bytearray()  # a whole (not streamed) WAV or PCM, until finish
        self._header_sent = False
        self._resampler: Any = None
        self._container: Any = None
        self._stream: Any = None
        self._buffer: _Buffer | None = None
        self._pts = 0
        self._finished = False
        if fmt in _CODECS:
            self._open_codec(bitrate)
        elif self.rate != in_rate:
            self._resampler = self._new_resampler("s16")

    # Public ----------------------------------------------------------------------

    def feed(self, pcm: bytes) -> bytes:
        """Encode a chunk of samples; the bytes of the answer made so far (may be empty)."""
        if self._finished:
            raise RuntimeError("the encoder has finished")
        if len(pcm) % 2:
            raise ValueError("PCM chunks are whole 16-bit samples")
        self.samples += len(pcm) // 2
        if self._container is not None:
            return self._encode(self._frame(pcm))
        if self._resampler is not None:
            pcm = self._resample(self._frame(pcm))
        if not self.streamed:
            self._pending += pcm
            return b""
        if self.format == "wav" and not self._header_sent:
            self._header_sent = True
            return wav_header(self.rate) + pcm
        return pcm

    def finish(self) -> bytes:
        """Flush the codec and close the container: the last bytes (a whole file when not streamed)."""
        if self._finished:
            return b""
        self._finished = True
        if self._container is not None:
            out = self._encode(None)
            self._container.close()
            assert self._buffer is not None
            return out + self._buffer.take()
        tail = self._resample(None) if self._resampler is not None else b""
        if self.streamed:
            if self.format == "wav" and not self._header_sent:
                self._header_sent = True
                return wav_header(self.rate) + tail
            return tail
        data = bytes(self._pending) + tail
        self._pending.clear()
        return (wav_header(self.rate, len(data)) if self.format == "wav" else b"") + data

    def close(self) -> None:
        """Drop the codec without flushing (the client went away)."""
        self._finished = True
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - closing a half-written container
                pass
            self._container = None

    @property
    def duration(self) -> float:
        """Seconds of audio fed so far."""
        return self.samples / self.in_rate if self.in_rate else 0.0

    # Inside --------------------------------------------------------------------------

    def _open_codec(self, bitrate: int | None) -> None:
        import av

        container_format, codec = _CODECS[self.format]
        self._buffer = _Buffer()
        self._container = av.open(self._buffer, mode="w", format=container_format)
        stream = self._container.add_stream(codec, rate=self.rate, layout="mono")
        if self.format in _BIT_RATES:
            stream.bit_rate = bitrate or _BIT_RATES[self.format]
        if self.format == "flac":
            stream.codec_context.format = "s16"
        self._stream = stream
        self._resampler = self._new_resampler(stream.codec_context.format.name)

    def _new_resampler(self, sample_format: str) -> Any:
        import av

        return av.AudioResampler(format=sample_format, layout="mono", rate=self.rate)

    def _frame(self, pcm: bytes) -> Any:
        import av
        import numpy as np

        samples = np.frombuffer(pcm, dtype="<i2").reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = self.in_rate
        frame.pts = self._pts
        self._pts += samples.shape[1]
        return frame

    def _resample(self, frame: Any) -> bytes:
        frames = self._resampler.resample(frame)
        return b"".join(bytes(f.to_ndarray().astype("<i2").tobytes()) for f in frames)

    def _encode(self, frame: Any) -> bytes:
        frames = self._resampler.resample(frame) if frame is not None else self._resampler.resample(None)
        for out in frames:
            out.pts = None  # the encoder counts its own samples
            for packet in self._stream.encode(out):
                self._container.mux(packet)
        if frame is None:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
        assert self._buffer is not None
        return self._buffer.take()


def encode(fmt: str, pcm: bytes, in_rate: int, *, rate: int | None = None, bitrate: int | None = None) -> bytes:
    """A whole audio file of fmt from 16-bit mono PCM at in_rate."""
    encoder = AudioEncoder(fmt, in_rate, rate=rate, bitrate=bitrate, streamed=False)
    return encoder.feed(pcm) + encoder.finish()
