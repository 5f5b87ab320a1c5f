"""Model files a config names by URL, fetched into the models folder on first use.

LocalAI configs carry `download_files` (`filename`, `uri`, `sha256`) and may give
`parameters.model` as a URL. lokal fetches a missing file when its model is first
requested, with the install path's downloader (`lokal.transfer.downloader`): to a
hidden partial file beside the target, resumed after a cut, checked against its
sha256 and renamed into place only once whole, under the same outbound-URL rules
as installs (`lokal.transfer.netguard`: no loopback/private/metadata addresses
unless allowed, every redirect checked). Files already present are used as they are.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from lokal.transfer import downloader as _downloader
from lokal.transfer.netguard import OutboundPolicy, URLRefused, map_url

log = logging.getLogger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")

DownloadError = _downloader.DownloadError


@dataclass(frozen=True)
class Download:
    """One file to fetch: where from, where to (inside the models folder), its hash."""

    url: str
    path: Path
    sha256: str | None = None


def hf_endpoint() -> str:
    """The Hugging Face endpoint, as huggingface_hub reads it (HF_ENDPOINT)."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def resolve_url(uri: str) -> str:
    """An http(s) URL for a LocalAI model URI (`huggingface://owner/repo/file`, `hf://`,
    `github:owner/repo/path@branch` too); ValueError for any other scheme."""
    try:
        return map_url(uri, hf_endpoint())
    except URLRefused as exc:
        raise ValueError(f"{uri!r}: {exc.rule}") from None


def is_url(value: str) -> bool:
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", value.strip())) or value.startswith("github:")


def url_file_name(uri: str) -> str:
    """The file name a URL's path ends in."""
    name = unquote(urlsplit(resolve_url(uri)).path.rsplit("/", 1)[-1])
    if not name or name in (".", ".."):
        raise ValueError(f"{uri!r} does not end in a file name")
    return name


def check_sha256(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    value = value.strip().lower()
    if not _SHA256.match(value):
        raise ValueError("sha256 must be 64 hexadecimal digits")
    return value


def fetch(download: Download, *, timeout: float = 60.0, policy: OutboundPolicy | None = None,
          downloader: _downloader.Downloader | None = None) -> bool:
    """Fetch download unless its file is there already; True when it was fetched.

    Without a downloader, one is made for this call from policy (default: the strict
    policy, no private hosts allowed). Refusals and failures are DownloadError."""
    target = download.path
    if target.exists():
        return False
    if downloader is None:
        downloader = _downloader.Downloader(policy or OutboundPolicy(stall_timeout=timeout,
                                                                     hf_endpoint=hf_endpoint()))
    started = time.monotonic()
    log.info("downloading %s from %s", target.name, download.url)
    try:
        downloader.fetch(download.url, target, sha256=download.sha256)
    except URLRefused as exc:
        raise DownloadError(f"downloading {target.name}: {exc.message}") from exc
    except _downloader.DownloadError:
        raise
    except _downloader.Cancelled as exc:
        raise DownloadError(f"downloading {target.name} was cancelled") from exc
    except OSError as exc:
        raise DownloadError(f"writing {target.name} failed: {exc.strerror or exc}") from exc
    log.info("downloaded %s (%d MB in %.1fs)", target.name, target.stat().st_size >> 20,
             time.monotonic() - started)
    return True
