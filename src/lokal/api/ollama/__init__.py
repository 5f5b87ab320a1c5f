"""Ollama's API (/api/*): the apps that speak only Ollama work against lokal.

Errors on these paths are Ollama's `{"error": "..."}` with the HTTP status.
"""

from __future__ import annotations

from lokal.api.family import Family, Mount
from lokal.api.ollama.errors import ollama_envelope, ollama_message

PREFIX = "/api"


# The routes import this package's modules (models, protocol), so they come last.
from lokal.api.ollama import create, manage, rerank, routes  # noqa: E402

__all__ = ["FAMILY", "PREFIX", "STREAMED_UPLOADS", "ollama_envelope", "ollama_message"]

FAMILY = Family("ollama", mounts=(Mount(routes.router, PREFIX, ("Ollama",)),
                                  Mount(manage.router, PREFIX, ("Ollama",)),
                                  Mount(create.router, PREFIX, ("Ollama",)),
                                  Mount(rerank.router, PREFIX, ("Ollama",)),
                                  Mount(routes.root, schema=False)),
                prefixes=(PREFIX,), envelope=ollama_envelope)

#: Paths whose uploads the server's body limit lets through: their routes stream them to
#: disk under a limit of their own (Ollama's blobs: MAX_DOWNLOAD_SIZE).
STREAMED_UPLOADS = create.STREAMED_UPLOADS
