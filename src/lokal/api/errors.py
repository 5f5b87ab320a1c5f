"""Errors as each API family shows them, from lokal's one exception tree.

Every failure path ends here: an exception becomes a `LokalError` (unknown ones a
500 with a log line), and the envelope is chosen by the API family the request
came through, by its path (`api.family.Families.envelope_for`, per app). OpenAI's
envelope is `{"error": {"message", "type", "param", "code"}}` with `code` the HTTP
status as an integer, as LocalAI and llama.cpp send it and as Dify's LocalAI
provider reads it. A family with another envelope says so in its `Family` value.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lokal.errors import ContextOverflowError, EngineError, LokalError, normalize_engine_error

log = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    501: "not_implemented_error",
    503: "service_unavailable_error",
    507: "insufficient_storage_error",
}


class APIError(LokalError):
    """An error the API layer raises itself, by status."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(message, param=param, status=status,
                         type=type or _TYPES.get(status, "server_error" if status >= 500
                                                 else "invalid_request_error"),
                         headers=headers, extra=extra)


def as_lokal_error(exc: BaseException) -> LokalError:
    """Any exception as a LokalError; one lokal does not know is a 500, logged."""
    if isinstance(exc, EngineError):
        return normalize_engine_error(exc)
    if isinstance(exc, LokalError):
        return exc
    log.error("unhandled error", exc_info=exc)
    return LokalError("The server had an internal error; see its log.")


Envelope = Callable[[LokalError], dict[str, Any]]


def openai_envelope(err: LokalError) -> dict[str, Any]:
    message, code = err.message, err.status
    if isinstance(err, ContextOverflowError):
        # OpenAI's words and code, which SDK users and agents test for.
        what = "messages" if err.param == "messages" else "prompt"
        message = (f"This model's maximum context length is {err.context} tokens. However, your "
                   f"{what} resulted in {err.prompt_tokens} tokens. Please reduce the length of the {what}.")
        code = "context_length_exceeded"
    error = {"message": message, "type": err.type, "param": err.param, "code": code}
    error.update(err.extra)
    return {"error": error}


def envelope_of(scope_app: Any, path: str) -> Envelope:
    """The envelope for path in an app (its families), OpenAI's when the app has none."""
    families = getattr(getattr(scope_app, "state", None), "families", None)
    return families.envelope_for(path) if families is not None else openai_envelope


def error_response(exc: BaseException, envelope: Envelope) -> JSONResponse:
    err = as_lokal_error(exc)
    return JSONResponse(envelope(err), status_code=err.status, headers=err.headers or None)


def error_bytes(status: int, message: str, envelope: Envelope, headers: dict[str, str] | None = None) -> bytes:
    """A whole error body for middleware that answers before any route runs."""
    return json.dumps(envelope(APIError(status, message, headers=headers))).encode()


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "Invalid request body.", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
    # Union members show up as type names in the location; they mean nothing to a user.
    loc = [p for p in loc if not p[:1].isupper() and "[" not in p
           and p not in ("str", "int", "list", "function-after", "function-before")]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        return "The request body is not valid JSON.", None
    msg = first.get("msg", "invalid value")
    if first.get("type") == "missing":
        return f"Missing required parameter: '{param}'.", param
    if param is None and first.get("type") in ("model_attributes_type", "dict_type"):
        return "The request body must be a JSON object.", None
    return (f"Invalid value for '{param}': {msg}." if param else f"Invalid request: {msg}."), param


def _respond(request: Request, exc: BaseException) -> JSONResponse:
    return error_response(exc, envelope_of(request.app, request.url.path))


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return _respond(request, APIError(400, message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "HTTP error"
        if exc.status_code == 404:
            message = "Unknown route. See /openapi.json for the routes this server answers."
        return _respond(request, APIError(exc.status_code, message, headers=getattr(exc, "headers", None)))

    @app.exception_handler(LokalError)
    async def _known(request: Request, exc: LokalError) -> JSONResponse:
        return _respond(request, exc)

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
        return _respond(request, exc)
