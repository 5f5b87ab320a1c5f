"""Which model plays which part in a realtime session, and the session's settings.

The chat model is the session's `model` (the upgrade's `?model=`); speech out is the
session's `voice`: a voice of the voice model (`REALTIME_VOICE_MODEL`, else the catalog's
first speech model) or the name of another speech model (its own default voice);
speech in is `input_audio_transcription.model` (default `REALTIME_TRANSCRIPTION_MODEL`,
else the first transcription model); server VAD runs on `REALTIME_VAD_MODEL` (else the
first VAD model; with none, sessions start with `turn_detection: null`). A name the
catalog does not know is an error, never another model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import lokal.api.realtime.protocol as p
from lokal.errors import NotFound
from lokal.models.catalog import ModelEntry
from lokal.models.registry import ModelRegistry
from lokal.models.synthesis import voices_of
from lokal.settings import Settings
from lokal.tasks import Tool

DEFAULT_DETECTION = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500,
                     "create_response": True, "interrupt_response": True}


@dataclass
class ResponseSettings:
    model: str
    modalities: list[str]
    instructions: str
    voice_model: str
    voice: str | None
    tools: list[Tool]
    tool_choice: str
    temperature: float | None
    max_tokens: int | None


def _first(registry: ModelRegistry, task: str) -> str | None:
    for entry in registry.entries:
        if isinstance(entry, ModelEntry) and task in entry.tasks:
            return entry.name
    return None


class Roles:
    def __init__(self, registry: ModelRegistry, settings: Settings, model: str) -> None:
        self.registry = registry
        self.model = registry.entry(model).name if model else model  # NotFound: refused at the door
        self.voice_model = settings.realtime_voice_model or _first(registry, "speak")
        self.transcription_model = settings.realtime_transcription_model or _first(registry, "transcribe")
        self.vad_model = settings.realtime_vad_model or _first(registry, "vad")

    def initial_config(self) -> dict[str, Any]:
        return {"model": self.model, "modalities": ["text", "audio"], "instructions": "",
                "voice": self.voice_model, "input_audio_format": "pcm16", "output_audio_format": "pcm16",
                "input_audio_transcription": ({"model": self.transcription_model, "language": None, "prompt": None}
                                              if self.transcription_model else None),
                "turn_detection": dict(DEFAULT_DETECTION) if self.vad_model else None,
                "tools": [], "tool_choice": "auto", "temperature": None, "max_response_output_tokens": "inf"}

    def _known(self, name: str, param: str, event_id: str | None) -> str:
        try:
            return self.registry.entry(name).name
        except NotFound as exc:
            raise p.EventError(f"The model '{name}' does not exist on this server.", code="model_not_found",
                               param=param, event_id=event_id) from exc

    def voice(self, voice: str | None, event_id: str | None, param: str = "session.voice") -> tuple[str, str | None]:
        """(speech model, voice of it or None for its default) for a session's voice."""
        if voice is None or voice == self.voice_model:
            if self.voice_model is None:
                raise p.EventError("This server has no speech model for audio answers: ask for the text "
                                   "modality only, or install a voice.", code="model_not_found", param=param,
                                   event_id=event_id)
            return self.voice_model, None
        try:
            entry = self.registry.entry(voice)
        except NotFound:
            entry = None
        if isinstance(entry, ModelEntry) and "speak" in entry.tasks:
            return entry.name, None
        if self.voice_model is not None:
            default = self.registry.entry(self.voice_model)
            if isinstance(default, ModelEntry) and voice in voices_of(default):
                return self.voice_model, voice
            offered = ", ".join(voices_of(default)) if isinstance(default, ModelEntry) else ""
        else:
            offered = ""
        raise p.EventError(f"Invalid value: '{voice}'. The voice is neither a speech model of this server nor a "
                           f"voice of '{self.voice_model}' ({offered or 'none'}).", param=param, event_id=event_id)

    def apply(self, config: dict[str, Any], changes: dict[str, Any], event_id: str | None) -> dict[str, Any]:
        """config with a session.update's changes, each checked (EventError: nothing changes)."""
        new = copy.deepcopy(config)
        if changes.get("model") is not None:
            new["model"] = self._known(changes["model"], "session.model", event_id)
        if "voice" in changes:
            self.voice(changes["voice"], event_id)
            new["voice"] = changes["voice"] or self.voice_model
        for name in ("modalities", "instructions", "input_audio_format", "output_audio_format", "tool_choice"):
            if changes.get(name) is not None:
                new[name] = changes[name]
        if "temperature" in changes:
            new["temperature"] = changes["temperature"]
        if "max_response_output_tokens" in changes:
            value = changes["max_response_output_tokens"]
            new["max_response_output_tokens"] = "inf" if value is None else value
        if "tools" in changes:
            new["tools"] = changes["tools"] or []
        if "input_audio_transcription" in changes:
            given = changes["input_audio_transcription"]
            if given is not None:
                given = {"model": self.transcription_model, "language": None, "prompt": None,
                         **{k: v for k, v in given.items() if v is not None}}
                if given["model"] is None:
                    raise p.EventError("This server has no transcription model.", code="model_not_found",
                                       param="session.input_audio_transcription.model", event_id=event_id)
                given["model"] = self._known(given["model"], "session.input_audio_transcription.model", event_id)
            new["input_audio_transcription"] = given
        if "turn_detection" in changes:
            given = changes["turn_detection"]
            if given is not None and self.vad_model is None:
                raise p.EventError("This server has no voice activity model for server_vad: set turn_detection "
                                   "to null and commit the input audio yourself.", code="model_not_found",
                                   param="session.turn_detection", event_id=event_id)
            new["turn_detection"] = given
        choice = new["tool_choice"]
        names = {t["name"] for t in new["tools"]}
        if isinstance(choice, dict) and choice.get("name") not in names:
            raise p.EventError(f"tool_choice names the function '{choice.get('name')}', which is not in tools.",
                               param="session.tool_choice", event_id=event_id)
        return new

    def response_settings(self, config: dict[str, Any], overrides: dict[str, Any],
                          event_id: str | None) -> ResponseSettings:
        merged = {**config, **{k: v for k, v in overrides.items() if v is not None}}
        modalities = list(merged["modalities"])
        voice_model, voice = (self.voice(merged.get("voice"), event_id, "response.voice")
                              if "audio" in modalities else ("", None))
        choice = merged.get("tool_choice") or "auto"
        if isinstance(choice, dict):
            choice = choice["name"]
        limit = overrides.get("max_output_tokens") or overrides.get("max_response_output_tokens") \
            or config.get("max_response_output_tokens")
        tools = [Tool(t["name"], t.get("description") or "", t.get("parameters")) for t in merged.get("tools") or []]
        if choice not in ("auto", "none", "required") and choice not in {t.name for t in tools}:
            raise p.EventError(f"tool_choice names the function '{choice}', which is not in tools.",
                               param="response.tool_choice", event_id=event_id)
        return ResponseSettings(model=config["model"], modalities=modalities,
                                instructions=merged.get("instructions") or "", voice_model=voice_model, voice=voice,
                                tools=tools, tool_choice=choice, temperature=merged.get("temperature"),
                                max_tokens=None if limit in (None, "inf") else int(limit))
