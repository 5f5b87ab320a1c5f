"""Errors on Ollama's paths: `{"error": "..."}` with the HTTP status, in Ollama's own words
where its clients know them."""

from __future__ import annotations

from typing import Any

from lokal.errors import ContextOverflowError, InfillNotSupported, LokalError, UnknownModelError
from lokal.install.conflicts import ModelExists


def ollama_message(err: LokalError) -> str:
    """An error in Ollama's words where Ollama's clients know them."""
    if isinstance(err, ContextOverflowError):
        return ("the prompt is longer than the context length currently available to the model; "
                "shorten the prompt, adjust the context length in settings, or use a model with a "
                f"longer context length ({err.prompt_tokens} tokens > {err.context})")
    if isinstance(err, UnknownModelError):
        return f"model '{err.name}' not found"
    if isinstance(err, InfillNotSupported):
        return "this model does not support insert (suffix: it has no fill-in-the-middle tokens)"
    if isinstance(err, ModelExists):
        return (f"a model named '{err.name}' is here already, installed from another source; "
                "delete it first (DELETE /api/delete) or copy it to another name (POST /api/copy)")
    return err.message


def ollama_envelope(err: LokalError) -> dict[str, Any]:
    return {"error": ollama_message(err)}
