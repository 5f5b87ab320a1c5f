"""Reliability and security tests: real servers under hostile, dropped and heavy traffic.

Shared helpers live here: the demo models folder (SmolLM2 as gpt-3.5-turbo,
all-MiniLM-L6-v2 as text-embedding-ada-002), the OpenAI error envelope check,
and a process's memory and threads read from /proc. Every loop in these tests is
bounded in count and in time, and all traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from tests.conftest import CHAT_FILE, place_folder, place_model

CHAT_MODEL = "gpt-3.5-turbo"
EMBED_MODEL = "text-embedding-ada-002"

CHAT_CONFIG = f"""\
name: {CHAT_MODEL}
parameters:
  model: {CHAT_FILE}
  temperature: 0.2
"""

EMBED_CONFIG = f"""\
name: {EMBED_MODEL}
backend: sentence-transformers
parameters:
  model: all-MiniLM-L6-v2
embeddings: true
"""


def demo_models(folder: Path, chat_extra: str = "") -> Path:
    """A models folder like `lokal demo`'s: SmolLM2 chat and MiniLM embeddings."""
    place_model(folder)
    place_folder(folder, "all-MiniLM-L6-v2")
    (folder / f"{CHAT_MODEL}.yaml").write_text(CHAT_CONFIG + chat_extra)
    (folder / f"{EMBED_MODEL}.yaml").write_text(EMBED_CONFIG)
    return folder


def family(path: str) -> str:
    """The API family a path belongs to, by the envelope its errors come in."""
    path = path.split("?", 1)[0]
    if path == "/api" or path.startswith("/api/"):
        return "ollama"
    if path.rstrip("/").endswith(("/messages", "/messages/count_tokens")) and "/v1/v1" not in path:
        return "anthropic"
    if path.removeprefix("/v1").startswith("/text-to-speech/"):
        return "elevenlabs"
    return "openai"


def envelope_problem(status: int, text: str, path: str = "") -> str | None:
    """Why a 4xx/5xx body is not the error envelope of its path's API family (None: it
    is): OpenAI's with code == status; Ollama's `{"error": "..."}`; Anthropic's
    `{"type": "error", "error": {"type", "message"}}`; ElevenLabs' `{"detail": {"status", "message"}}`."""
    try:
        body = json.loads(text)
    except ValueError:
        return f"not JSON: {text[:200]!r}"
    kind = family(path)
    if kind == "ollama":
        error = body.get("error") if isinstance(body, dict) else None
        return None if isinstance(error, str) and error else f"no Ollama error string: {text[:200]!r}"
    if kind == "elevenlabs":
        detail = body.get("detail") if isinstance(body, dict) else None
        if not isinstance(detail, dict) or not isinstance(detail.get("status"), str) \
                or not isinstance(detail.get("message"), str) or not detail["message"]:
            return f"no ElevenLabs detail object: {text[:200]!r}"
        return None
    if kind == "anthropic":
        error = body.get("error") if isinstance(body, dict) else None
        if body.get("type") != "error" or not isinstance(error, dict):
            return f"no Anthropic error object: {text[:200]!r}"
        if not isinstance(error.get("type"), str) or not isinstance(error.get("message"), str) or not error["message"]:
            return f"Anthropic error lacks type or message: {text[:200]!r}"
        return None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return f"no error object: {text[:200]!r}"
    missing = {"message", "type", "param", "code"} - set(error)
    if missing:
        return f"error lacks {sorted(missing)}: {text[:200]!r}"
    if error["code"] != status and not (status == 400 and error["code"] == "context_length_exceeded"):
        return f"code {error['code']!r} != status {status}: {text[:200]!r}"
    if not isinstance(error["message"], str) or not error["message"]:
        return f"empty message: {text[:200]!r}"
    return None


def stream_errors(text: str) -> list[dict[str, Any]]:
    """The error objects sent as events inside a Server-Sent Events body."""
    errors = []
    for line in text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            try:
                event = json.loads(line[len("data: "):])
            except ValueError:
                continue
            if isinstance(event, dict) and isinstance(event.get("error"), dict):
                errors.append(event["error"])
    return errors


def proc_status(pid: int) -> dict[str, str]:
    """/proc/PID/status as a dict (values stripped)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def rss_mb(pid: int) -> float:
    return int(proc_status(pid)["VmRSS"].split()[0]) / 1024


def peak_rss_mb(pid: int) -> float:
    return int(proc_status(pid)["VmHWM"].split()[0]) / 1024


def threads(pid: int) -> int:
    return int(proc_status(pid)["Threads"])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


_GAUGE = re.compile(r"^lokal_requests_in_flight (\d+)(?:\.0)?$", re.M)


def in_flight(metrics_text: str) -> int:
    match = _GAUGE.search(metrics_text)
    assert match, metrics_text
    return int(match.group(1))
