"""An API family as one value, and the families one app serves.

Each family package (`api/openai`, `api/ollama`, `api/anthropic`, ...) exposes one
`Family`: its name (the `family` label of the request metrics and the access log),
the route prefixes it owns, its error envelope, and its routers with where they are
mounted. `create_app` installs the families it is given; the app keeps them in a
`Families` (on `app.state.families`) that names a route's family and picks a path's
error envelope. Nothing is registered at import time, so two apps built in one
process with different families share nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from fastapi import APIRouter, FastAPI

from lokal.api.errors import Envelope, openai_envelope

#: The family of a route no family claims.
DEFAULT = "openai"


@dataclass(frozen=True)
class Mount:
    """A router and where it is mounted (`prefix`); `also_bare`: mounted again without
    the prefix, out of the schema (OpenAI clients call both /v1/x and /x)."""

    router: APIRouter
    prefix: str = ""
    tags: tuple[str, ...] = ()
    also_bare: bool = False
    schema: bool = True


@dataclass(frozen=True)
class Family:
    name: str
    mounts: tuple[Mount, ...] = ()
    #: route prefixes (paths without /v1) that belong to this family
    prefixes: tuple[str, ...] = ()
    #: errors on those prefixes (None: OpenAI's envelope)
    envelope: Envelope | None = None
    #: successful requests are logged at debug level (probes, scrapes)
    quiet: bool = False
    #: paths served without an API key
    open_paths: tuple[str, ...] = ()

    def install(self, app: FastAPI) -> None:
        for mount in self.mounts:
            app.include_router(mount.router, prefix=mount.prefix, tags=list(mount.tags) or None,
                               include_in_schema=mount.schema)
            if mount.also_bare:
                app.include_router(mount.router, include_in_schema=False)


def _bare(path: str) -> str:
    return path[3:] if path.startswith("/v1/") or path == "/v1" else path


def _owns(prefix: str, path: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


@dataclass
class Families:
    """The families of one app, by route prefix (the longest prefix wins)."""

    families: list[Family] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._by_prefix = sorted(((p, f) for f in self.families for p in f.prefixes), key=lambda item: -len(item[0]))

    @classmethod
    def of(cls, families: Iterable[Family]) -> Families:
        return cls(list(families))

    def _find(self, path: str) -> Family | None:
        bare = _bare(path)
        for prefix, family in self._by_prefix:
            if _owns(prefix, bare):
                return family
        return None

    def name_of(self, route: str) -> str:
        """The family of a route template (as the request metrics name routes)."""
        if route == "unmatched":
            return "unmatched"
        family = self._find(route)
        return family.name if family is not None else DEFAULT

    def quiet(self, name: str) -> bool:
        return any(f.quiet for f in self.families if f.name == name)

    def envelope_for(self, path: str) -> Envelope:
        """The error envelope of the family that owns path."""
        family = self._find(path)
        if family is not None and family.envelope is not None:
            return family.envelope
        return openai_envelope

    def route_templates(self) -> list[str]:
        """Every route's template as the request metrics name routes (/v1/x and /x are /x)."""
        out = []
        for family in self.families:
            for mount in family.mounts:
                prefix = "" if mount.prefix == "/v1" else mount.prefix
                out += [prefix + r.path for r in mount.router.routes if getattr(r, "path", "")]
        return out

    @property
    def open_paths(self) -> tuple[str, ...]:
        return tuple(p for f in self.families for p in f.open_paths)
