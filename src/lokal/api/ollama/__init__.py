"""Ollama's API (/api/*): the apps that speak only Ollama work against lokal.

Errors on these paths are Ollama's `{"error": "..."}` with the HTTP status.
"""

from __future__ import annotations

from typing import Any

from lokal.api.family import Family, Mount
from lokal.errors import LokalError

PREFIX = "/api"


def ollama_envelope(err: LokalError) -> dict[str, Any]:
    return {"error": err.message}


# The routes import this package's modules (models, protocol), so they come last.
from lokal.api.ollama import manage, routes  # noqa: E402

FAMILY = Family("ollama", mounts=(Mount(routes.router, PREFIX, ("Ollama",)),
                                  Mount(manage.router, PREFIX, ("Ollama",)),
                                  Mount(routes.root, schema=False)),
                prefixes=(PREFIX,), envelope=ollama_envelope)
