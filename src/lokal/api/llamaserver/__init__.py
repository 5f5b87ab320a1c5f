"""llama-server's own text routes (tokenize, detokenize, apply-template, infill, props, slots)."""

from __future__ import annotations

from lokal.api.family import Family, Mount
from lokal.api.llamaserver.routes import admin_router, router

FAMILY = Family("llamaserver", mounts=(Mount(router), Mount(admin_router)),
                prefixes=("/tokenize", "/detokenize", "/apply-template", "/infill", "/props", "/slots"))
