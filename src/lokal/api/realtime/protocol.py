"""The Realtime API's client events as pydantic models, and their errors as OpenAI words them.

A client event is one JSON text frame with a `type`. `parse_event` reads a frame into
one of the models below, or raises `EventError`: the `error` event's type, code,
message and param (OpenAI's codes: `invalid_json`, `invalid_value`,
`missing_required_parameter`, `unknown_parameter`, `invalid_type`, ...). Sessions are
the beta shape (`modalities`, `voice`, `input_audio_format`, `turn_detection`, ...);
fields this server does not use are accepted and ignored, values it cannot honour
are errors, never something else silently.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

#: The only audio format both ways: 16-bit mono little-endian PCM at 24 kHz.
AUDIO_FORMAT = "pcm16"
RATE = 24000


class EventError(Exception):
    """A client event this server refuses: becomes an `error` event, the session goes on."""

    def __init__(self, message: str, *, code: str = "invalid_value", param: str | None = None,
                 type: str = "invalid_request_error", event_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.type = type
        self.event_id = event_id


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TurnDetection(_Model):
    type: Literal["server_vad"] = "server_vad"
    threshold: float = Field(0.5, gt=0, lt=1)
    prefix_padding_ms: int = Field(300, ge=0, le=10_000)
    silence_duration_ms: int = Field(500, ge=0, le=10_000)
    create_response: bool = True
    interrupt_response: bool = True


class Transcription(_Model):
    model: str | None = None
    language: str | None = None
    prompt: str | None = None


class FunctionTool(_Model):
    type: Literal["function"] = "function"
    name: str = Field(min_length=1)
    description: str = ""
    parameters: dict[str, Any] | None = None


class NamedFunction(_Model):
    type: Literal["function"] = "function"
    name: str = Field(min_length=1)


ToolChoice = Literal["auto", "none", "required"] | NamedFunction
Modality = Literal["text", "audio"]


def _tokens(value: Any) -> Any:
    if value == "inf":
        return None
    return value


class SessionConfig(_Model):
    """What `session.update` may set (every field optional: only those given change)."""

    model: str | None = None
    modalities: list[Modality] | None = Field(None, min_length=1)
    instructions: str | None = None
    voice: str | None = Field(None, min_length=1)
    input_audio_format: Literal["pcm16"] | None = None
    output_audio_format: Literal["pcm16"] | None = None
    input_audio_transcription: Transcription | None = None
    turn_detection: TurnDetection | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: ToolChoice | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    max_response_output_tokens: int | None = Field(None, ge=1, le=1_000_000)

    _inf = field_validator("max_response_output_tokens", mode="before")(classmethod(lambda cls, v: _tokens(v)))


class ContentPart(_Model):
    type: Literal["input_text", "input_audio", "text", "audio", "output_text", "output_audio", "item_reference"]
    text: str | None = None
    audio: str | None = None
    transcript: str | None = None
    id: str | None = None


class Item(_Model):
    id: str | None = Field(None, max_length=64)
    type: Literal["message", "function_call", "function_call_output"]
    role: Literal["user", "assistant", "system"] | None = None
    content: list[ContentPart] = Field(default_factory=list)
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | None = None
    status: str | None = None


class ResponseConfig(_Model):
    modalities: list[Modality] | None = Field(None, min_length=1)
    instructions: str | None = None
    voice: str | None = Field(None, min_length=1)
    output_audio_format: Literal["pcm16"] | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: ToolChoice | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    max_output_tokens: int | None = Field(None, ge=1, le=1_000_000)
    max_response_output_tokens: int | None = Field(None, ge=1, le=1_000_000)
    conversation: Literal["auto", "none"] = "auto"
    metadata: dict[str, Any] | None = None

    _inf = field_validator("max_output_tokens", "max_response_output_tokens",
                           mode="before")(classmethod(lambda cls, v: _tokens(v)))


class ClientEvent(_Model):
    type: str
    event_id: str | None = None


class SessionUpdate(ClientEvent):
    session: SessionConfig


class AudioAppend(ClientEvent):
    audio: str


class AudioCommit(ClientEvent):
    pass


class AudioClear(ClientEvent):
    pass


class ItemCreate(ClientEvent):
    previous_item_id: str | None = None
    item: Item


class ItemTruncate(ClientEvent):
    item_id: str
    content_index: int = Field(ge=0)
    audio_end_ms: int = Field(ge=0)


class ItemDelete(ClientEvent):
    item_id: str


class ItemRetrieve(ClientEvent):
    item_id: str


class ResponseCreate(ClientEvent):
    response: ResponseConfig | None = None


class ResponseCancel(ClientEvent):
    response_id: str | None = None


EVENTS: dict[str, type[ClientEvent]] = {
    "session.update": SessionUpdate,
    "input_audio_buffer.append": AudioAppend,
    "input_audio_buffer.commit": AudioCommit,
    "input_audio_buffer.clear": AudioClear,
    "conversation.item.create": ItemCreate,
    "conversation.item.truncate": ItemTruncate,
    "conversation.item.delete": ItemDelete,
    "conversation.item.retrieve": ItemRetrieve,
    "response.create": ResponseCreate,
    "response.cancel": ResponseCancel,
}

_CODES = {"missing": "missing_required_parameter", "extra_forbidden": "unknown_parameter",
          "literal_error": "invalid_value", "greater_than": "decimal_below_min_value",
          "greater_than_equal": "decimal_below_min_value", "less_than": "decimal_above_max_value",
          "less_than_equal": "decimal_above_max_value", "too_short": "invalid_value",
          "string_too_short": "invalid_value", "string_too_long": "string_above_max_length",
          "string_type": "invalid_type", "int_type": "invalid_type", "int_parsing": "invalid_type",
          "float_type": "invalid_type", "float_parsing": "invalid_type", "bool_type": "invalid_type",
          "bool_parsing": "invalid_type", "dict_type": "invalid_type", "list_type": "invalid_type",
          "model_type": "invalid_type"}


def parse_event(frame: str | bytes) -> ClientEvent:
    """One client frame as its event model; EventError for anything else."""
    try:
        data = json.loads(frame)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EventError(f"The event is not valid JSON: {exc}.", code="invalid_json") from exc
    if not isinstance(data, dict):
        raise EventError("An event is a JSON object with a 'type'.", code="invalid_type")
    event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
    kind = data.get("type")
    if not isinstance(kind, str):
        raise EventError("Missing required parameter: 'type'.", code="missing_required_parameter",
                         param="type", event_id=event_id)
    model = EVENTS.get(kind)
    if model is None:
        raise EventError(f"Invalid value: '{kind[:80]}'. Supported values are: "
                         f"{', '.join(repr(k) for k in EVENTS)}.", code="invalid_value", param="type",
                         event_id=event_id)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"])
        raise EventError(f"Invalid '{param}': {first['msg']}.", code=_CODES.get(first["type"], "invalid_value"),
                         param=param, event_id=event_id) from exc


def decode_audio(data: str, param: str = "audio") -> bytes:
    """Base64 pcm16 (whole 16-bit samples); EventError for anything else."""
    try:
        pcm = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EventError(f"Invalid '{param}': the audio is not valid base64.", param=param) from exc
    if len(pcm) % 2:
        raise EventError(f"Invalid '{param}': pcm16 audio is whole 16-bit samples; {len(pcm)} bytes is not.",
                         param=param)
    return pcm


def encode_audio(pcm: bytes) -> str:
    return base64.b64encode(pcm).decode("ascii")
