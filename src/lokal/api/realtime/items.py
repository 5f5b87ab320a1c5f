"""A conversation item as a realtime session keeps it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Item:
    """A conversation item as the session keeps it: its wire form, and for user audio the
    transcript on its way; for assistant audio, where each sentence's audio ends."""

    wire: dict[str, Any]
    transcript: asyncio.Future[str] | None = None
    audio_marks: list[tuple[int, int]] = field(default_factory=list)  # (audio ms, transcript chars)

    @property
    def id(self) -> str:
        return self.wire["id"]
