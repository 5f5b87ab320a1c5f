"""lokal's own small API: what the web UI needs beyond the OpenAI and LocalAI routes."""

from __future__ import annotations

from lokal.api import keys
from lokal.api.family import Family, Mount
from lokal.api.lokal import routes

FAMILY = Family("lokal", mounts=(Mount(routes.router), Mount(keys.router)), prefixes=("/lokal",))
