"""Model files a config names by URL, fetched into the models folder on first use.

LocalAI configs carry `download_files` (`filename`, `uri`, `sha256`) and may give
`parameters.model` as a URL. lokal fetches a missing file when its model is first
requested: to a hidden temporary name beside the target, hashing as it goes, and
renames it into place only once it is whole and its sha256 (when given) matches,
so an interrupted or corrupt download never sits under the real name. Files
already present are used as they are.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx

log = logging.getLogger("lokal.models.download")

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_HF = re.compile(r"^(huggingface|hf)://([^/]+)/([^/]+)/(.+)$")
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download that failed; the message says why, for the user."""


@dataclass(frozen=True)
class Download:
    """One file to fetch: where from, where to (inside the models folder), its hash."""

    url: str
    path: Path
    sha256: str | None = None


def resolve_url(uri: str) -> str:
    """An http(s) URL for a LocalAI model URI (`huggingface://owner/repo/file` too)."""
    uri = uri.strip()
    hf = _HF.match(uri)
    if hf:
        owner, repo, file = hf.group(2), hf.group(3), hf.group(4)
        return f"https://huggingface.co/{owner}/{repo}/resolve/main/{file}"
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{uri!r} is not an http(s) or huggingface:// URL")
    return uri


def is_url(value: str) -> bool:
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", value.strip()))


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


def fetch(download: Download, *, timeout: float = 60.0) -> bool:
    """Fetch download unless its file is there already; True when it was fetched."""
    target = download.path
    if target.exists():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.parent / f".{target.name}.{secrets.token_hex(4)}.part"
    digest = hashlib.sha256()
    received = 0
    started = last_report = time.monotonic()
    log.info("downloading %s from %s", target.name, download.url)
    try:
        with httpx.stream("GET", download.url, follow_redirects=True, timeout=timeout) as response:
            if response.status_code != 200:
                raise DownloadError(f"downloading {target.name} from {download.url} failed: "
                                    f"HTTP {response.status_code}")
            total = int(response.headers.get("content-length") or 0) or None
            with partial.open("wb") as out:
                for chunk in response.iter_bytes(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    now = time.monotonic()
                    if now - last_report >= 10:
                        last_report = now
                        share = f" ({100 * received / total:.0f}%)" if total else ""
                        log.info("downloading %s: %d MB%s", target.name, received >> 20, share)
                out.flush()
                os.fsync(out.fileno())
            if total is not None and received != total:
                raise DownloadError(f"downloading {target.name} from {download.url} failed: the "
                                    f"connection ended after {received} of {total} bytes")
        actual = digest.hexdigest()
        if download.sha256 is not None and actual != download.sha256:
            raise DownloadError(f"{target.name} from {download.url} does not match its sha256: "
                                f"expected {download.sha256}, got {actual}; the file was not kept")
        os.replace(partial, target)
    except httpx.HTTPError as exc:
        raise DownloadError(f"downloading {target.name} from {download.url} failed: {exc}") from exc
    except OSError as exc:
        raise DownloadError(f"writing {target.name} failed: {exc.strerror or exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
    log.info("downloaded %s (%d MB in %.1fs)", target.name, received >> 20, time.monotonic() - started)
    return True
