"""The catalog of one models folder: its entries by name, aliases, and first-use downloads.

What a model can do is decided once, when the folder is scanned (or when its
downloads arrive: `ready`), and kept on its `ModelEntry`. No request re-reads a model
file. Broken entries are kept with their reasons; requests for them get those reasons.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import Callable
from pathlib import Path

from lokal.errors import ModelUnavailableError, NotFound, UnknownModelError
from lokal.metrics import Metrics
from lokal.models import download
from lokal.models.catalog.describing import settle
from lokal.models.catalog.entries import Entry, ModelEntry, PendingEntry
from lokal.models.catalog.scanning import scan_models

log = logging.getLogger(__name__)


def resolve_alias(name: str, aliases: dict[str, str]) -> str | None:
    """The served model an alias setting maps name to, or None: an exact key first,
    then shell-style patterns (`claude-*`), the most specific (longest) first, so
    `*` is a catch-all only for names nothing else matches."""
    if name in aliases:
        return aliases[name]
    for pattern in sorted(aliases, key=len, reverse=True):
        if fnmatch.fnmatchcase(name, pattern):
            return aliases[pattern]
    return None


class Catalog:
    """Named entries of one models folder (and an optional list of configs)."""

    def __init__(self, models_path: Path, config_file: Path | None = None, *,
                 aliases: dict[str, str] | None = None,
                 fetch_file: Callable[[download.Download], bool] | None = None,
                 metrics: Metrics | None = None) -> None:
        self.models_path = models_path
        self.config_file = config_file
        self._entries: dict[str, Entry] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        # How a config's download_files are fetched (the server's: shared with its installer).
        self.fetch_file: Callable[[download.Download], bool] = fetch_file or download.fetch
        self.metrics = metrics or Metrics()
        #: names clients hard-code -> served models (MODEL_ALIASES); see `resolve_alias`
        self.aliases: dict[str, str] = dict(aliases or {})
        self.scan()

    def scan(self) -> list[Entry]:
        """Read the folder again: new, changed and removed configs take effect now."""
        entries = scan_models(self.models_path, self.config_file)
        self._entries = {e.name: e for e in entries}
        return entries

    @property
    def entries(self) -> list[Entry]:
        return list(self._entries.values())

    def entry(self, name: str) -> Entry:
        """The entry a request's model name means: its own, else its alias's; unknown: 404.
        Ollama's `NAME:latest` is NAME (apps list /api/tags, then call /v1 with it)."""
        found = self._entries.get(name)
        if found is None and name.endswith(":latest"):
            found = self._entries.get(name[: -len(":latest")])
        if found is None:
            target = resolve_alias(name, self.aliases)
            if target is not None:
                found = self._entries.get(target)
                if found is None:
                    raise NotFound(f"The model '{name}' is mapped by MODEL_ALIASES to '{target}', which "
                                   "this server does not have. GET /v1/models lists its models.",
                                   param="model")
                log.debug("model %r is served by %r (MODEL_ALIASES)", name, target)
        if found is None:
            raise UnknownModelError(name)
        return found

    async def ready(self, entry: Entry) -> ModelEntry:
        """The servable entry of entry: a broken one is refused with its reason; a pending
        one has its files fetched (concurrent requests wait for one download; a failure
        is the request's error and the next request tries again) and is described, and
        the catalog keeps what that made of it."""
        if isinstance(entry, ModelEntry):
            return entry
        if not isinstance(entry, PendingEntry):
            raise ModelUnavailableError(entry.name, entry.error)
        for item in entry.pending_downloads:
            # One lock per file: models sharing a file fetch it once too.
            async with self._locks.setdefault(("download", str(item.path)), asyncio.Lock()):
                try:
                    if await asyncio.to_thread(self.fetch_file, item):  # a no-op once it is there
                        self.metrics.downloaded(entry.name, item.path.stat().st_size)
                except download.DownloadError as exc:
                    self.metrics.downloaded(entry.name, None)
                    log.error("model %s: %s", entry.name, exc)
                    raise ModelUnavailableError(entry.name, str(exc)) from exc
        async with self._locks.setdefault((entry.name, "ready"), asyncio.Lock()):
            current = self._entries.get(entry.name, entry)
            settled = current if not isinstance(current, PendingEntry) else \
                await asyncio.to_thread(settle, current, self.models_path)
            if self._entries.get(entry.name) is current:
                self._entries[entry.name] = settled
        if isinstance(settled, ModelEntry):
            return settled
        if isinstance(settled, PendingEntry):
            raise ModelUnavailableError(entry.name, "its files are still missing")
        raise ModelUnavailableError(entry.name, settled.error)
