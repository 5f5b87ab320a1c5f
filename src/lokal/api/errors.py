"""OpenAI-style errors: `{"error": {"message", "type", "param", "code"}}`.

`code` is the HTTP status as an integer, as LocalAI and llama.cpp send it and as
Dify's LocalAI provider reads it; `type` names the kind as OpenAI does.
Every failure path ends here with a 4xx/5xx in that envelope; none as text.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lokal.backends.base import EngineError
from lokal.models.embedding import EmbeddingInputError
from lokal.models.functions import FunctionSpecError
from lokal.models.prompting import PromptError
from lokal.api.streaming import EngineStuck, RequestTimeout, ShuttingDown
from lokal.models.registry import (ModelBusyError, ModelCapabilityError, ModelUnavailableError,
                                   UnknownModelError)

log = logging.getLogger("lokal.api")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    501: "not_implemented_error",
    503: "service_unavailable_error",
}


class APIError(Exception):
    """An error answer for the client."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.headers = headers
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.status}
        error.update(self.extra)
        return {"error": error}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def from_engine(exc: EngineError) -> APIError:
    """An engine's refusal as the client sees it."""
    if exc.kind == "exceed_context_size_error":
        prompt, ctx = exc.details.get("n_prompt_tokens"), exc.details.get("n_ctx")
        message = (f"This model's maximum context length is {ctx} tokens, but the request has "
                   f"{prompt} prompt tokens. Shorten the messages or prompt."
                   if prompt is not None and ctx is not None else exc.message)
        return APIError(400, message, param="messages",
                        extra={"n_prompt_tokens": prompt, "n_ctx": ctx})
    if exc.status >= 500:
        return APIError(exc.status, exc.message, type="server_error")
    return APIError(exc.status, exc.message)


def to_api_error(exc: Exception) -> APIError:
    """Any exception lokal knows, as an APIError (unknown ones become a 500)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, UnknownModelError):
        return APIError(404, f"The model '{exc.name}' does not exist. GET /v1/models lists the "
                             "models this server has.", param="model", type="not_found_error")
    if isinstance(exc, ModelUnavailableError):
        return APIError(500, str(exc), param="model", type="server_error")
    if isinstance(exc, EngineError):
        return from_engine(exc)
    if isinstance(exc, PromptError):
        return APIError(400, str(exc))
    if isinstance(exc, ModelBusyError):
        return APIError(429, str(exc), type="rate_limit_error",
                        headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, RequestTimeout):
        return APIError(408, str(exc), type="timeout_error")
    if isinstance(exc, ShuttingDown):
        return APIError(503, str(exc), type="service_unavailable_error")
    if isinstance(exc, EngineStuck):
        return APIError(500, str(exc), type="server_error")
    if isinstance(exc, FunctionSpecError):
        return APIError(400, str(exc), param="tool_choice")
    if isinstance(exc, ModelCapabilityError):
        return APIError(400, str(exc), param="model")
    if isinstance(exc, EmbeddingInputError):
        return APIError(400, str(exc), param="input")
    log.exception("unhandled error", exc_info=exc)
    return APIError(500, "The server had an internal error; see its log.", type="server_error")


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "Invalid request body.", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
    # Union members show up as type names in the location; they mean nothing to a user.
    loc = [p for p in loc if not p[:1].isupper() and "[" not in p and p not in ("str", "int", "list", "function-after", "function-before")]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        return "The request body is not valid JSON.", None
    msg = first.get("msg", "invalid value")
    if first.get("type") == "missing":
        return f"Missing required parameter: '{param}'.", param
    if param is None and first.get("type") in ("model_attributes_type", "dict_type"):
        return "The request body must be a JSON object.", None
    return (f"Invalid value for '{param}': {msg}." if param else f"Invalid request: {msg}."), param


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return APIError(400, message, param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "HTTP error"
        if exc.status_code == 404:
            message = "Unknown route. See /openapi.json for the routes this server answers."
        return APIError(exc.status_code, message, headers=getattr(exc, "headers", None)).response()

    for cls in (UnknownModelError, ModelUnavailableError, EngineError, PromptError,
                ModelCapabilityError, EmbeddingInputError, FunctionSpecError, ModelBusyError,
                RequestTimeout, EngineStuck, ShuttingDown):
        app.add_exception_handler(cls, _known)

    @app.exception_handler(Exception)
    async def _unhandled(_: Request, exc: Exception) -> JSONResponse:
        return to_api_error(exc).response()


async def _known(_: Request, exc: Exception) -> JSONResponse:
    return to_api_error(exc).response()
