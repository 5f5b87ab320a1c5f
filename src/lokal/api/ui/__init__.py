"""The web UI: static files shipped in the package, served at /ui (see routes.py)."""
