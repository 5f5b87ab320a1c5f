"""What a user may name to install: parsed, never fetched here.

* a gallery entry: `NAME` (searched in every gallery, first match wins) or
  `GALLERY@NAME`;
* a file on Hugging Face: `huggingface://owner/repo/file` (also `hf://owner/repo/file`);
* a Hugging Face repo: `hf://owner/repo[:QUANT]` (the GGUF whose name carries QUANT,
  default Q4_K_M);
* a GGUF by URL: `https://host/path/model.gguf`;
* a LocalAI model config by URL: `github:owner/repo/path.yaml@branch`, an https URL
  of a `.yaml`, or `file:///path.yaml` (from the CLI only).

Malformed references are `BadRequest` (400).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from lokal.errors import BadRequest

DEFAULT_QUANT = "Q4_K_M"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_HF_REPO = re.compile(r"^hf://([A-Za-z0-9][\w.-]*)/([A-Za-z0-9][\w.-]*)(?::([\w.-]+))?$")
_HF_FILE = re.compile(r"^(?:huggingface|hf)://([A-Za-z0-9][\w.-]*)/([A-Za-z0-9][\w.@-]*)/(.+)$")
_GITHUB = re.compile(r"^github:[^/\s]+/[^/\s]+/[^@\s]+\.ya?ml(@[^@\s]+)?$")
_ENTRY = re.compile(r"^[^\s@]([^@]*[^\s@])?$")


class BadReference(BadRequest):
    def __init__(self, ref: str, why: str) -> None:
        super().__init__(f"cannot install {ref!r}: {why}", param="id")


@dataclass(frozen=True)
class Reference:
    """A parsed reference. kind: gallery, hf_repo, hf_file, url (a model file) or config."""

    kind: str
    text: str
    gallery: str | None = None  # kind gallery: the gallery named, if any
    name: str | None = None  # kind gallery: the entry
    repo: str | None = None  # hf kinds: owner/repo
    file: str | None = None  # hf_file: path in the repo
    quant: str | None = None  # hf_repo: the tag asked for (None: default)
    url: str | None = None  # url/config kinds


def parse(text: str, *, allow_file: bool = False) -> Reference:
    """Parse what a user typed or sent; BadRequest (400) when it cannot be one."""
    if not isinstance(text, str) or not text.strip():
        raise BadReference(str(text), "the reference is empty")
    ref = text.strip()
    if _CONTROL.search(ref) or len(ref) > 2048:
        raise BadReference(ref[:80], "the reference contains control characters or is too long")
    scheme_match = _SCHEME.match(ref)
    scheme = scheme_match.group(1).lower() if scheme_match and "://" in ref or ref.startswith("github:") else None
    if scheme is None:
        return _gallery_ref(ref)
    if scheme == "github":
        if not _GITHUB.match(ref):
            raise BadReference(ref, "a github: reference is github:owner/repo/path/config.yaml[@branch]")
        return Reference(kind="config", text=ref, url=ref)
    if scheme in ("hf", "huggingface"):
        repo = _HF_REPO.match(ref) if scheme == "hf" else None
        if repo:
            owner, name, quant = repo.groups()
            return Reference(kind="hf_repo", text=ref, repo=f"{owner}/{name}", quant=quant)
        file = _HF_FILE.match(ref)
        if file:
            owner, name, path = file.groups()
            if ".." in path.split("/") or path.startswith("/"):
                raise BadReference(ref, "the file path in the repo may not contain '..'")
            if path.lower().endswith((".yaml", ".yml")):
                return Reference(kind="config", text=ref, url=ref)
            return Reference(kind="hf_file", text=ref, repo=f"{owner}/{name}", file=path)
        raise BadReference(ref, "use huggingface://owner/repo/file, hf://owner/repo/file or "
                                "hf://owner/repo[:QUANT]")
    if scheme in ("http", "https"):
        parts = urlsplit(ref)
        if not parts.netloc:
            raise BadReference(ref, "the URL has no host")
        path = parts.path.lower()
        if path.endswith(".gguf"):
            return Reference(kind="url", text=ref, url=ref)
        if path.endswith((".yaml", ".yml")):
            return Reference(kind="config", text=ref, url=ref)
        raise BadReference(ref, "a URL must name a .gguf model file or a .yaml model config")
    if scheme == "file":
        if not allow_file:
            raise BadReference(ref, "file:// references are accepted from the command line only")
        return Reference(kind="config", text=ref, url=ref)
    raise BadReference(ref, f"the scheme {scheme!r} is not supported (use a gallery name, "
                            "https://, huggingface://, hf:// or github:)")


def _gallery_ref(ref: str) -> Reference:
    gallery, sep, name = ref.partition("@")
    if not sep:
        gallery, name = "", ref
    if "@" in name or (sep and not gallery.strip()) or not name.strip() or not _ENTRY.match(name):
        raise BadReference(ref, "a gallery reference is NAME or GALLERY@NAME")
    return Reference(kind="gallery", text=ref, gallery=gallery.strip() or None, name=name.strip())
