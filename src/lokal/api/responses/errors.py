"""Errors on the Responses API: OpenAI's envelope, with the Responses API's own words
where its clients read them (Codex treats `context_length_exceeded` as "the context
window is full" and compacts or stops instead of retrying)."""

from __future__ import annotations

from typing import Any

from lokal.api.errors import openai_envelope
from lokal.errors import ContextOverflowError, LokalError


def responses_envelope(err: LokalError) -> dict[str, Any]:
    body = openai_envelope(err)
    if isinstance(err, ContextOverflowError):
        body["error"].update(
            message=(f"Your input exceeds the context window of this model ({err.prompt_tokens} tokens > "
                     f"{err.context}). Please adjust your input and try again."),
            param="input", code="context_length_exceeded")
    return body
