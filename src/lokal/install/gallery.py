"""LocalAI-format model galleries: an index YAML of entries, read as untrusted data.

An index is a YAML list of entries: `name`, `url` (a base config: LocalAI's gallery
model format with `config_file`, `files`, `prompt_templates`, or a plain model
config), `description`, `license`, `tags`, `urls`, `icon`, `overrides`, `files`
(`filename`, `uri`, `sha256`, optional `size`). lokal also reads an inline
`config_file` in an entry (its built-in gallery uses that, so it needs no base
config URL). Galleries are configured as LocalAI does, `GALLERIES` a JSON list of
`{"name", "url"}` with `file://`, `https://` or `github:owner/repo/path@branch`
URLs; lokal's built-in gallery (`builtin.yaml` beside this module, name `lokal`)
always comes first.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

from lokal.errors import BadRequest, NotFound
from lokal.formats import localai_yaml
from lokal.transfer.netguard import OutboundPolicy

BUILTIN_NAME = "lokal"
BUILTIN_PATH = Path(__file__).with_name("builtin.yaml")


class GalleryError(BadRequest):
    """A gallery that cannot be read; the message names the gallery (and the line)."""


@dataclass(frozen=True)
class GallerySource:
    name: str
    url: str


@dataclass
class Entry:
    """One gallery entry, as read (validated when installed)."""

    name: str
    gallery: GallerySource
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def description(self) -> str:
        return str(self.raw.get("description") or "")

    @property
    def tags(self) -> list[str]:
        tags = self.raw.get("tags") or []
        return [str(t) for t in tags] if isinstance(tags, list) else []

    def as_available(self, installed: bool) -> dict[str, Any]:
        """The entry as LocalAI's /models/available lists it."""
        keep = ("name", "url", "description", "license", "urls", "icon", "tags", "overrides", "files")
        out = {k: self.raw.get(k) for k in keep if k in self.raw}
        out["name"] = self.name
        out["gallery"] = {"name": self.gallery.name, "url": self.gallery.url}
        out["installed"] = installed
        return out


def parse_galleries(value: str | None) -> list[GallerySource]:
    """The GALLERIES setting (a JSON list of {name, url}); BadRequest if it is not one."""
    sources = [GallerySource(BUILTIN_NAME, "builtin")]
    if not value or not value.strip():
        return sources
    try:
        items = json.loads(value)
    except ValueError as exc:
        raise GalleryError(f"GALLERIES is not JSON: {exc}") from None
    if not isinstance(items, list):
        raise GalleryError('GALLERIES must be a JSON list of {"name": ..., "url": ...}')
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("url"), str):
            raise GalleryError(f'GALLERIES: each item needs a "url": {item!r}')
        name = str(item.get("name") or item["url"])
        sources.append(GallerySource(name, item["url"]))
    return sources


def read_source(policy: OutboundPolicy, url: str, *, what: str, allow_file: bool,
                limit: int = 8 << 20) -> bytes:
    """Bytes of a gallery or config document: file:// (from settings/CLI only), or fetched
    under the outbound policy (https, github:, hosts allowed)."""
    if url == "builtin":
        return BUILTIN_PATH.read_bytes()
    parts = urlsplit(url)
    if parts.scheme == "file":
        if not allow_file:
            raise BadRequest(f"{what}: file:// URLs are accepted from settings and the command "
                             "line only", param="url")
        path = Path(unquote(parts.path))
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise GalleryError(f"{what}: cannot read {path}: {exc.strerror}") from None
        if len(data) > limit:
            raise GalleryError(f"{what}: {path} is over the {limit}-byte limit")
        return data
    return policy.fetch_bytes(policy.map(url), limit=limit, what=what)


def load_yaml(data: bytes, what: str) -> Any:
    """YAML from untrusted bytes; errors name what and the line."""
    try:
        return localai_yaml.load(data.decode("utf-8"))  # go-yaml's dialect, as LocalAI reads it
    except UnicodeDecodeError:
        raise GalleryError(f"{what} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise GalleryError(f"{what} does not parse{where}: {problem}") from None


def read_index(policy: OutboundPolicy, source: GallerySource) -> list[Entry]:
    what = f"gallery {source.name!r} ({source.url})"
    raw = load_yaml(read_source(policy, source.url, what=what, allow_file=True), what)
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise GalleryError(f"{what}: the index must be a YAML list of entries, not {type(raw).__name__}")
    entries = []
    for number, item in enumerate(raw, 1):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"].strip():
            raise GalleryError(f"{what}: entry {number} is not a mapping with a name")
        entries.append(Entry(item["name"].strip(), source, item))
    return entries


class Galleries:
    """The configured galleries; read on demand (they are small), never cached stale."""

    def __init__(self, sources: list[GallerySource], policy: OutboundPolicy) -> None:
        self.sources = sources
        self.policy = policy

    def source(self, name: str) -> GallerySource:
        for source in self.sources:
            if source.name == name:
                return source
        known = ", ".join(s.name for s in self.sources)
        raise NotFound(f"no gallery named {name!r} (galleries: {known}; add one with GALLERIES)",
                       param="id")

    def entries(self, gallery: str | None = None) -> list[Entry]:
        sources = [self.source(gallery)] if gallery else self.sources
        out: list[Entry] = []
        for source in sources:
            out.extend(read_index(self.policy, source))
        return out

    def find(self, name: str, gallery: str | None = None) -> Entry:
        """The entry by name (case-insensitive; first gallery wins), or 404 with close matches."""
        entries = self.entries(gallery)
        for entry in entries:
            if entry.name == name:
                return entry
        for entry in entries:
            if entry.name.lower() == name.lower():
                return entry
        names = [e.name for e in entries]
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        close += [n for n in names if name.lower() in n.lower() and n not in close][:5 - len(close)]
        hint = f" Did you mean: {', '.join(close)}?" if close else " `lokal models search` lists them."
        where = f"gallery {gallery!r}" if gallery else "any gallery"
        raise NotFound(f"no model {name!r} in {where}.{hint}", param="id",
                       extra={"close_matches": close})

    def search(self, text: str = "") -> list[Entry]:
        words = text.lower().split()
        found = []
        for entry in self.entries():
            hay = " ".join([entry.name, entry.description, " ".join(entry.tags)]).lower()
            if all(w in hay for w in words):
                found.append(entry)
        return found
