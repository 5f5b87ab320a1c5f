"""Named API keys: the keys file, read and written.

`API_KEYS_FILE` is a YAML list of keys by name. A key is never stored in clear:
the file holds its sha256 (`lokal keys add NAME` makes a key, prints it once and
appends its hash), and a presented key is hashed and compared with every hash in
constant time (`hmac.compare_digest`, never an early exit). Each key may carry
limits::

    - name: open-webui
      sha256: 5f2b...e1            # of the key, as `lokal keys add` writes it
      requests_per_minute: 120     # requests that use a model, in any 60 s
      tokens_per_minute: 40000     # prompt + completion tokens, in any 60 s
      concurrent_requests: 4       # requests using a model at once
      models: [qwen*, nomic-embed] # shell patterns; absent: every model
      admin: false                 # may manage models and read usage
      weight: 2                    # its share when requests wait for slots (default 1)

The file is read again when it changes (checked on every request, a `stat`);
a change that does not parse is logged and the keys read last stay in force.
`API_KEY` and `ADMIN_API_KEY` remain unnamed keys with every right.

Who a request comes from and each key's limits: `lokal.callers`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import re
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

log = logging.getLogger(__name__)

KEY_PREFIX = "lk-"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_HEX = re.compile(r"^[0-9a-f]{64}$")

#: The limits a key may have, and how an error names each.
LIMITS = {
    "requests_per_minute": "requests per minute",
    "tokens_per_minute": "tokens per minute",
    "concurrent_requests": "concurrent requests",
}


def hash_key(key: str | bytes) -> str:
    """The sha256 of a key, as the keys file holds it (hex)."""
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).hexdigest()


def new_key() -> str:
    """A fresh random key (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


class KeysFileError(ValueError):
    """A keys file that cannot be used, with the reason for the user."""


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    sha256: str
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)
    concurrent_requests: int | None = Field(None, ge=1)
    models: list[str] | None = None
    admin: bool = False
    weight: float = Field(1.0, gt=0, le=1000)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("a key's name is 1-64 letters, digits and . _ @ - (it labels metrics and "
                             "log lines)")
        return value

    @field_validator("sha256")
    @classmethod
    def _sha(cls, value: str) -> str:
        value = value.strip().lower()
        if not _HEX.match(value):
            raise ValueError("sha256 is the key's SHA-256 in 64 hex digits (`lokal keys add` writes it), "
                             "never the key itself")
        return value

    @field_validator("models", mode="before")
    @classmethod
    def _models(cls, value: Any) -> Any:
        if isinstance(value, str):  # "a, b" as a convenience
            value = [v.strip() for v in value.split(",")]
        if isinstance(value, list) and not all(isinstance(v, str) and v.strip() for v in value):
            raise ValueError("models is a list of model names or shell patterns (qwen*)")
        return value


@dataclass(frozen=True)
class NamedKey:
    """One key of the keys file: its name, its hash and its limits (None: no limit)."""

    name: str
    sha256: str
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    concurrent_requests: int | None = None
    models: tuple[str, ...] | None = None  # shell patterns; None: every model
    admin: bool = False
    weight: float = 1.0
    digest: bytes = field(default=b"", repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", self.sha256.encode("ascii"))

    @property
    def limited(self) -> bool:
        return any(getattr(self, name) is not None for name in LIMITS)

    def allows(self, model: str) -> bool:
        """Whether the key may use the model named so (`NAME:latest` is NAME)."""
        if self.models is None:
            return True
        names = {model, model.removesuffix(":latest")}
        return any(fnmatch.fnmatchcase(n, pattern) for n in names for pattern in self.models)


def parse_keys(text: str, source: str = "API_KEYS_FILE") -> list[NamedKey]:
    """The keys of a keys file's text; KeysFileError says what is wrong and where."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise KeysFileError(f"{source} is not valid YAML: {exc}") from None
    if data is None:
        return []
    if isinstance(data, dict) and set(data) == {"keys"}:
        data = data["keys"] or []
    if not isinstance(data, list):
        raise KeysFileError(f"{source} must be a YAML list of keys (- name: ..., sha256: ...)")
    keys: list[NamedKey] = []
    names: set[str] = set()
    hashes: set[str] = set()
    for position, item in enumerate(data, start=1):
        where = f"{source}, key {position}"
        if isinstance(item, dict) and "name" in item and isinstance(item["name"], str):
            where += f" ({item['name']})"
        if not isinstance(item, dict):
            raise KeysFileError(f"{where}: each key is a mapping with name and sha256")
        if "key" in item:
            raise KeysFileError(f"{where}: the file holds a key's sha256, never the key itself; "
                                "`lokal keys add NAME` makes a key and writes its hash")
        try:
            entry = _Entry.model_validate(item)
        except ValidationError as exc:
            first = exc.errors()[0]
            field_name = ".".join(str(p) for p in first.get("loc", ())) or "?"
            message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
            if first.get("type") == "extra_forbidden":
                message = (f"unknown field (a key has name, sha256, {', '.join(LIMITS)}, models, "
                           "admin, weight)")
            raise KeysFileError(f"{where}: {field_name}: {message}") from None
        if entry.name in names:
            raise KeysFileError(f"{where}: the name {entry.name!r} is used twice")
        if entry.sha256 in hashes:
            raise KeysFileError(f"{where}: the same key (sha256) is listed twice")
        names.add(entry.name)
        hashes.add(entry.sha256)
        keys.append(NamedKey(entry.name, entry.sha256, entry.requests_per_minute, entry.tokens_per_minute,
                             entry.concurrent_requests,
                             tuple(m.strip() for m in entry.models) if entry.models is not None else None,
                             entry.admin, entry.weight))
    return keys


def read_keys(path: Path) -> list[NamedKey]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeysFileError(f"API_KEYS_FILE {path} does not exist (`lokal keys add NAME` creates it)") from None
    except (OSError, UnicodeError) as exc:
        raise KeysFileError(f"cannot read API_KEYS_FILE {path}: {exc}") from None
    return parse_keys(text, f"API_KEYS_FILE {path}")


class KeysFile:
    """The keys file, read again whenever it has changed (a `stat` per look)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp = self._stat()
        self._keys = read_keys(path)  # at start, a bad file is an error
        log.info("API_KEYS_FILE %s: %d named key(s)", path, len(self._keys))

    def _stat(self) -> tuple[int, ...] | None:
        try:
            s = os.stat(self.path)
        except OSError:
            return None
        return (s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns)

    @property
    def keys(self) -> list[NamedKey]:
        stamp = self._stat()
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                keys = read_keys(self.path)
            except KeysFileError as exc:
                log.error("%s; the keys read before stay in force until it is fixed", exc)
            else:
                self._keys = keys
                log.info("API_KEYS_FILE %s changed: %d named key(s) now", self.path, len(keys))
        return self._keys


# Writing the file (`lokal keys add/remove`) --------------------------------------


def _write(path: Path, text: str) -> None:
    """Replace path's content at once (a reader sees the old file or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


HEADER = ("# lokal's API keys (API_KEYS_FILE): a key's sha256, never the key itself.\n"
          "# `lokal keys add NAME` makes a key and appends it; the server reads changes at once.\n")


def add_key(path: Path, name: str, *, requests_per_minute: int | None = None,
            tokens_per_minute: int | None = None, concurrent_requests: int | None = None,
            models: list[str] | None = None, admin: bool = False, weight: float | None = None) -> str:
    """Make a key for name, append its hash and limits to the keys file (created if
    missing; comments and other keys kept) and return the key, which is written nowhere."""
    text = path.read_text(encoding="utf-8") if path.exists() else HEADER
    existing = parse_keys(text, str(path))
    if isinstance(yaml.safe_load(text), dict):
        raise KeysFileError(f"{path} is a mapping with `keys:`; `lokal keys add` appends to a plain "
                            "YAML list only: move the keys to the top level")
    if any(k.name == name for k in existing):
        raise KeysFileError(f"{path} already has a key named {name!r}; remove it first "
                            f"(`lokal keys remove {name}`) or pick another name")
    key = new_key()
    item: dict[str, Any] = {"name": name, "sha256": hash_key(key)}
    for option, value in (("requests_per_minute", requests_per_minute), ("tokens_per_minute", tokens_per_minute),
                          ("concurrent_requests", concurrent_requests), ("models", models),
                          ("weight", weight)):
        if value is not None:
            item[option] = value
    if admin:
        item["admin"] = True
    block = yaml.safe_dump([item], sort_keys=False, default_flow_style=False, width=1000)
    if text and not text.endswith("\n"):
        text += "\n"
    if yaml.safe_load(text) == []:  # a file holding `[]`
        text = HEADER
    new_text = text + block
    parse_keys(new_text, str(path))  # the result must read back, or nothing is written
    _write(path, new_text)
    return key


def remove_key(path: Path, name: str) -> bool:
    """Take the key named name out of the keys file (other lines, comments included, kept);
    False when there is none by that name."""
    text = path.read_text(encoding="utf-8")
    parse_keys(text, str(path))
    node = yaml.compose(text)
    if node is None or not isinstance(node, yaml.SequenceNode):
        return False
    lines = text.splitlines(keepends=True)
    for position, item in enumerate(node.value):
        if not isinstance(item, yaml.MappingNode):
            continue
        fields = {k.value: v for k, v in item.value if isinstance(k, yaml.ScalarNode)}
        if getattr(fields.get("name"), "value", None) != name:
            continue
        first = item.start_mark.line
        if position + 1 < len(node.value):
            last = node.value[position + 1].start_mark.line  # the next item's dash line
        else:
            last = item.end_mark.line + (1 if item.end_mark.column else 0)
        while last > first + 1 and lines[last - 1].lstrip().startswith("#"):
            last -= 1  # a comment above the next key is the next key's
        new_text = "".join(lines[:first] + lines[last:])
        if [k.name for k in parse_keys(new_text, str(path))] != \
                [k.name for k in parse_keys(text, str(path)) if k.name != name]:
            raise KeysFileError(f"{path}: cannot remove {name!r} without touching other keys; edit it by hand")
        _write(path, new_text)
        return True
    return False
