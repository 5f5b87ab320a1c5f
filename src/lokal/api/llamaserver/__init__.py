"""llama-server's own text routes (tokenize, detokenize, apply-template, infill, props, slots)."""

from lokal.api.llamaserver.routes import admin_router, router

__all__ = ["admin_router", "router"]
