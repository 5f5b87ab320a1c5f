"""Ollama's API (/api/*): the apps that speak only Ollama work against lokal.

Errors on these paths are Ollama's `{"error": "..."}` with the HTTP status.
"""

from __future__ import annotations

from typing import Any

from lokal.api.errors import ENVELOPES, register_envelope
from lokal.errors import LokalError

PREFIX = "/api"


def ollama_envelope(err: LokalError) -> dict[str, Any]:
    return {"error": err.message}


def register() -> None:
    """Answer errors under /api in Ollama's envelope (once per process)."""
    if not any(prefix == PREFIX for prefix, _ in ENVELOPES):
        register_envelope(PREFIX, ollama_envelope)
