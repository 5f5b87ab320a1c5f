"""Anthropic's Messages API (/v1/messages), with errors in Anthropic's envelope."""

from __future__ import annotations

from lokal.api.anthropic.render import anthropic_envelope
from lokal.api.anthropic.routes import router
from lokal.api.family import Family, Mount

FAMILY = Family("anthropic", mounts=(Mount(router, "/v1", ("Anthropic Messages",), also_bare=True),),
                prefixes=("/messages",), envelope=anthropic_envelope)
