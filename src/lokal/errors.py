"""lokal's exception tree, at the bottom of the import graph.

Every error a client may see is a `LokalError`: it carries its HTTP status, the
error type OpenAI-style clients read, and (for bad requests) the parameter at
fault. Domain errors subclass one of the few kinds below; each API family turns
any of them into its own envelope by base class, in one handler, so no status is
ever picked by matching an exception's text. Anything that is not a LokalError
is a 500 with a log line.
"""

from __future__ import annotations

from typing import Any


class LokalError(Exception):
    """An error with a status and a type for the client."""

    status: int = 500
    type: str = "server_error"

    def __init__(self, message: str, *, param: str | None = None, status: int | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        self.headers = headers or {}
        self.extra = extra or {}


class BadRequest(LokalError):
    """The request cannot be served as sent (400); `param` names the field at fault."""

    status = 400
    type = "invalid_request_error"


class Unauthorized(LokalError):
    status = 401
    type = "authentication_error"


class Forbidden(LokalError):
    status = 403
    type = "permission_error"


class NotFound(LokalError):
    status = 404
    type = "not_found_error"


class Conflict(LokalError):
    status = 409
    type = "invalid_request_error"


class Busy(LokalError):
    """Too much waiting already (429); the client may retry after `retry_after` seconds."""

    status = 429
    type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after: int = 1, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after
        self.headers.setdefault("Retry-After", str(retry_after))


class Timeout(LokalError):
    status = 408
    type = "timeout_error"


class ServerError(LokalError):
    """lokal or an engine failed (500); the message says why, for the user."""

    status = 500
    type = "server_error"


class BadGateway(LokalError):
    """A server lokal had to reach (a model source, a gallery) could not be reached or failed (502)."""

    status = 502
    type = "upstream_error"


class Unavailable(LokalError):
    status = 503
    type = "service_unavailable_error"


class InsufficientStorage(LokalError):
    """Not enough disk or memory for what was asked (507)."""

    status = 507
    type = "insufficient_storage_error"


# Domain errors shared by several layers -------------------------------------


class UnknownModelError(NotFound):
    """No model by that name (never answered by another model)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"The model '{name}' does not exist. GET /v1/models lists the models "
                         "this server has.", param="model")
        self.name = name


class ModelUnavailableError(ServerError):
    """The model exists but cannot load; the reason is for the user."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"model {name!r} cannot be loaded: {reason}", param="model")
        self.name = name


class ModelBusyError(Busy):
    """Every slot is busy and the wait queue is full."""

    def __init__(self, name: str, limit: int, retry_after: int = 1) -> None:
        super().__init__(f"The model '{name}' is busy: {limit} requests are running or waiting "
                         "(PARALLEL_REQUESTS + QUEUE_SIZE). Retry shortly.", retry_after=retry_after)
        self.name = name


class ModelCapabilityError(BadRequest):
    """The model exists but does not do the task the request asks for."""

    def __init__(self, name: str, task: str, hint: str = "") -> None:
        what = {"chat": "chat", "complete": "text completion", "embed": "embeddings",
                "rerank": "rerank", "transcribe": "audio transcription",
                "speak": "speech synthesis (text to speech)",
                "vad": "voice activity detection", "image": "image generation",
                "image_edit": "image edits"}.get(task, task)
        super().__init__(f"The model '{name}' does not support {what}.{hint}", param="model")
        self.name = name
        self.task = task


class EngineError(LokalError):
    """An engine refused or failed a request; status and kind come from the engine."""

    def __init__(self, status: int, message: str, kind: str | None = None,
                 details: dict[str, Any] | None = None) -> None:
        status = status if 400 <= status <= 599 else 500
        super().__init__(message, status=status,
                         type=("server_error" if status >= 500 else "invalid_request_error"))
        self.kind = kind
        self.details = details or {}

    @classmethod
    def from_dict(cls, error: dict[str, Any]) -> EngineError:
        status = error.get("code")
        if not isinstance(status, int) or not 400 <= status <= 599:
            status = 500
        details = {k: v for k, v in error.items() if k not in ("code", "message", "type")}
        return cls(status, str(error.get("message") or "engine error"), error.get("type"), details)


class ContextOverflowError(BadRequest):
    """A prompt longer than the model's context window. It carries the numbers, so that
    each API family says it in its own clients' words (Anthropic's "prompt is too long",
    OpenAI's context_length_exceeded, ...): the envelopes pick it by type."""

    def __init__(self, prompt_tokens: int, context: int, *, param: str = "messages") -> None:
        super().__init__(f"This model's maximum context length is {context} tokens, but the request "
                         f"has {prompt_tokens} prompt tokens. Shorten the messages or prompt.",
                         param=param, extra={"n_prompt_tokens": prompt_tokens, "n_ctx": context})
        self.prompt_tokens = prompt_tokens
        self.context = context


class RequestTimeout(Timeout):
    def __init__(self, seconds: float) -> None:
        super().__init__(f"The request did not finish within its {seconds:g} s timeout; "
                         "generation was stopped.")


class ShuttingDown(Unavailable):
    def __init__(self) -> None:
        super().__init__("The server is shutting down and its grace period is over; the request "
                         "was stopped. Retry against a running server.")


class EngineStuck(ServerError):
    def __init__(self, seconds: float) -> None:
        super().__init__(f"The model produced nothing for {seconds:g} s (WATCHDOG_BUSY_TIMEOUT); "
                         "the request was ended and the model will be reloaded.")


class EngineStopped(ServerError):
    """A model's engine process ended (crashed, was killed) while serving the request."""

    type = "engine_stopped"

    def __init__(self, name: str, detail: str = "") -> None:
        super().__init__(f"The engine of the model '{name}' stopped while serving this request"
                         f"{detail}. The model is loaded again on the next request; retry.")
        self.name = name


class ModelFailedError(ModelUnavailableError):
    """A model whose engine kept crashing, refused until it is reloaded."""

    type = "model_failed"


class InsufficientMemory(InsufficientStorage):
    """A model that would not fit in the memory budget (507)."""

    def __init__(self, message: str, *, needed: int, free: int) -> None:
        super().__init__(message, extra={"needed_bytes": needed, "free_bytes": free})


class InfillNotSupported(BadRequest):
    """Fill in the middle (a suffix) asked of a model without FIM tokens."""

    def __init__(self) -> None:
        super().__init__("This model cannot fill in the middle: its vocabulary has no fill-in-the-middle "
                         "tokens (prefix, suffix, middle). Leave out suffix, or use a code model made "
                         "for infill.", param="suffix")


#: The engine's kind for a model without fill-in-the-middle tokens.
INFILL_NOT_SUPPORTED = "infill_not_supported"


def normalize_engine_error(exc: EngineError) -> LokalError:
    """An engine's refusal in lokal's words where lokal knows better ones."""
    if exc.kind == INFILL_NOT_SUPPORTED:
        return InfillNotSupported()
    if exc.kind == "exceed_context_size_error":
        prompt, ctx = exc.details.get("n_prompt_tokens"), exc.details.get("n_ctx")
        if isinstance(prompt, int) and isinstance(ctx, int):
            return ContextOverflowError(prompt, ctx)
    return exc
