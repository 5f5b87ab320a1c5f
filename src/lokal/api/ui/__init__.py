"""The web UI: static files shipped in the package, served at /ui (see routes.py)."""

from __future__ import annotations

from lokal.api.family import Family, Mount
from lokal.api.ui import routes

FAMILY = Family("ui", mounts=(Mount(routes.router),), prefixes=(routes.PREFIX,), open_paths=routes.OPEN_PATHS)
