"""The server's events, in the Realtime API's (beta) names and shapes. Translation only:
each function is one event as a dict; the session sends them."""

from __future__ import annotations

import secrets
from typing import Any

from lokal.errors import ContextOverflowError, LokalError
from lokal.tasks import Usage

#: OpenAI's codes for lokal's refusals, by status (a prompt over the context has its own)
CODES = {404: "model_not_found", 403: "permission_denied", 429: "rate_limit_exceeded"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


def event(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "event_id": new_id("event"), **fields}


def error(message: str, *, type: str = "invalid_request_error", code: str | None = None,
          param: str | None = None, event_id: str | None = None) -> dict[str, Any]:
    return event("error", error={"type": type, "code": code, "message": message, "param": param,
                                 "event_id": event_id})


def refusal(err: LokalError, *, param: str | None = None, event_id: str | None = None) -> dict[str, Any]:
    """The error event for one of lokal's errors, with OpenAI's code for it."""
    code = "context_length_exceeded" if isinstance(err, ContextOverflowError) else CODES.get(err.status)
    return error(err.message, type=err.type, code=code, param=err.param if param is None else param,
                 event_id=event_id)


def session(config: dict[str, Any], session_id: str, expires_at: int) -> dict[str, Any]:
    return {"id": session_id, "object": "realtime.session", "expires_at": expires_at, **config}


def message(item_id: str, role: str, content: list[dict[str, Any]], status: str = "completed") -> dict[str, Any]:
    return {"id": item_id, "object": "realtime.item", "type": "message", "status": status, "role": role,
            "content": content}


def function_call(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
    return {"id": item_id, "object": "realtime.item", "type": "function_call", "status": status,
            "call_id": call_id, "name": name, "arguments": arguments}


def function_output(item_id: str, call_id: str, output: str) -> dict[str, Any]:
    return {"id": item_id, "object": "realtime.item", "type": "function_call_output", "call_id": call_id,
            "output": output}


def usage(u: Usage, *, audio_out: bool) -> dict[str, Any]:
    output_audio = u.completion_tokens if audio_out else 0
    return {"total_tokens": u.total_tokens, "input_tokens": u.prompt_tokens,
            "output_tokens": u.completion_tokens,
            "input_token_details": {"cached_tokens": u.cached_tokens or 0, "text_tokens": u.prompt_tokens,
                                    "audio_tokens": 0},
            "output_token_details": {"text_tokens": u.completion_tokens - output_audio,
                                     "audio_tokens": output_audio}}


def response(response_id: str, status: str, output: list[dict[str, Any]], *, modalities: list[str],
             voice: str, details: dict[str, Any] | None = None, u: Usage | None = None,
             max_output_tokens: int | None = None, temperature: float | None = None) -> dict[str, Any]:
    return {"id": response_id, "object": "realtime.response", "status": status, "status_details": details,
            "output": output, "modalities": modalities, "voice": voice, "output_audio_format": "pcm16",
            "temperature": temperature, "max_output_tokens": "inf" if max_output_tokens is None else max_output_tokens,
            "usage": usage(u, audio_out="audio" in modalities) if u is not None else None,
            "conversation_id": "conv_default", "metadata": None}
