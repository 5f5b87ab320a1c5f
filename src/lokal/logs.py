"""Logging: the request a line is about, and text or JSON lines.

Each HTTP request runs with a `RequestContext` in a context variable (set by the
API's observability middleware); a filter on the handler stamps every record
with its request id, so any line logged while serving a request (by lokal, by
uvicorn, from threads started with `asyncio.to_thread`) can be followed from the
client's `X-Request-ID`. Code deeper down adds what it learns (the model, token
counts) with `annotate`, and the access line reports it.

`LOG_FORMAT=json` writes one JSON object per line (for Loki, Elastic, ...);
otherwise lines are plain text. Prompts and completions are logged only at debug
level; API keys never.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any

FORMATS = ("text", "json")


@dataclass
class RequestContext:
    """What the log lines and metrics of one request share."""

    id: str
    method: str = ""
    path: str = ""
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    audio_seconds: float | None = None  # audio transcribed or spoken
    images: int | None = None  # images made
    key: str | None = None  # the name of the API key it came with (named keys only)
    caller: Any = None  # its `lokal.callers.Caller`: the key's rights and limits


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "lokal_request", default=None)


def current() -> RequestContext | None:
    """The request being served in this context, if any."""
    return _current.get()


def bind(context: RequestContext) -> contextvars.Token[RequestContext | None]:
    return _current.set(context)


def unbind(token: contextvars.Token[RequestContext | None]) -> None:
    _current.reset(token)


def annotate(**fields: Any) -> None:
    """Record facts about the current request (model=..., prompt_tokens=...); a no-op
    outside a request. None values leave a field as it is."""
    context = _current.get()
    if context is None:
        return
    for name, value in fields.items():
        if value is not None:
            setattr(context, name, value)


class RequestIdFilter(logging.Filter):
    """Gives every record a `request_id` attribute ("-" outside requests)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            context = _current.get()
            record.request_id = context.id if context is not None else "-"
        return True


#: Attributes every LogRecord has; anything else was passed with `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime",
                                                                          "request_id"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id and extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", "-")
        if request_id != "-":
            entry["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`HH:MM:SS LEVEL logger: message [request id]`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", "-")
        return line if request_id == "-" else f"{line} [{request_id}]"


def setup(level: str = "info", fmt: str = "text") -> None:
    """Configure the root logger: one stderr handler in the chosen format."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler], force=True)
