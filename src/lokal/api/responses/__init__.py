"""OpenAI's Responses API (/v1/responses)."""

from __future__ import annotations

from lokal.api.family import Family, Mount
from lokal.api.responses.errors import responses_envelope
from lokal.api.responses.routes import router

FAMILY = Family("responses", mounts=(Mount(router, "/v1", ("OpenAI Responses",), also_bare=True),),
                prefixes=("/responses",), envelope=responses_envelope)
