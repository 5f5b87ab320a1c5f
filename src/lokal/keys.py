"""Named API keys: the keys file, who a request comes from, and each key's limits.

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

A request's `Caller` (one per request, in its `lokal.logs` context) says which
key it came with; the model registry asks it whether a model may be used
(`permit`: 403 whether or not the model exists) and admits the request against
the key's limits once (`admit`: 429 naming the limit, with Retry-After). The
per-key counters behind those limits live in one `Gate` per app.
"""

from __future__ import annotations

import collections
import fnmatch
import hashlib
import hmac
import logging
import math
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lokal import logs
from lokal.errors import Busy, Forbidden

log = logging.getLogger(__name__)

KEY_PREFIX = "lk-"
WINDOW = 60.0  # seconds: the "minute" of the per-minute limits
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


# Limits ---------------------------------------------------------------------------


class KeyLimitReached(Busy):
    """A named key over one of its limits (429, Retry-After)."""

    def __init__(self, key: str, limit: str, value: int, retry_after: int) -> None:
        what = LIMITS[limit]
        if limit == "concurrent_requests":
            detail = f"{value} of its requests are running"
        else:
            detail = f"it used its {value} {what}"
        super().__init__(f"The API key '{key}' is over its limit of {value} {what} ({limit} in "
                         f"API_KEYS_FILE): {detail}. Retry after {retry_after} s.",
                         retry_after=retry_after, extra={"limit": limit})
        self.key = key
        self.limit = limit


class ModelForbidden(Forbidden):
    """A model the key may not use; the same answer whether or not the model exists."""

    def __init__(self, name: str) -> None:
        super().__init__(f"The model '{name}' does not exist or this API key may not use it.",
                         param="model")
        self.name = name


@dataclass
class _Meter:
    requests: collections.deque[float] = field(default_factory=collections.deque)
    tokens: collections.deque[tuple[float, int]] = field(default_factory=collections.deque)
    token_sum: int = 0
    running: int = 0

    def expire(self, now: float) -> None:
        while self.requests and self.requests[0] <= now - WINDOW:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= now - WINDOW:
            self.token_sum -= self.tokens.popleft()[1]


class Gate:
    """The per-key counters behind the limits, for one app (on its event loop)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._meters: dict[str, _Meter] = {}
        self.on_refusal: Callable[[str, str], None] = lambda key, limit: None

    def running(self, name: str) -> int:
        meter = self._meters.get(name)
        return meter.running if meter is not None else 0

    def admit(self, key: NamedKey) -> None:
        """Count a request of key in, or raise KeyLimitReached naming the first limit it is over."""
        meter = self._meters.setdefault(key.name, _Meter())
        now = self.clock()
        meter.expire(now)
        refusal: KeyLimitReached | None = None
        if key.concurrent_requests is not None and meter.running >= key.concurrent_requests:
            refusal = KeyLimitReached(key.name, "concurrent_requests", key.concurrent_requests, 1)
        elif key.requests_per_minute is not None and len(meter.requests) >= key.requests_per_minute:
            oldest = meter.requests[-key.requests_per_minute]
            refusal = KeyLimitReached(key.name, "requests_per_minute", key.requests_per_minute,
                                      _seconds(oldest + WINDOW - now))
        elif key.tokens_per_minute is not None and meter.token_sum >= key.tokens_per_minute:
            left = meter.token_sum
            until = now
            for at, tokens in meter.tokens:  # when enough of them have left the window
                left -= tokens
                until = at + WINDOW
                if left < key.tokens_per_minute:
                    break
            refusal = KeyLimitReached(key.name, "tokens_per_minute", key.tokens_per_minute,
                                      _seconds(until - now))
        if refusal is not None:
            self.on_refusal(key.name, refusal.limit)
            raise refusal
        meter.running += 1
        if key.requests_per_minute is not None:
            meter.requests.append(now)

    def done(self, key: NamedKey, tokens: int) -> None:
        """An admitted request of key has ended, having used tokens."""
        meter = self._meters.setdefault(key.name, _Meter())
        now = self.clock()
        meter.running = max(0, meter.running - 1)
        if tokens > 0 and key.tokens_per_minute is not None:
            meter.tokens.append((now, tokens))
            meter.token_sum += tokens
        meter.expire(now)
        if not meter.running and not meter.requests and not meter.tokens:
            del self._meters[key.name]


def _seconds(value: float) -> int:
    return max(1, math.ceil(value))


# Who a request comes from ---------------------------------------------------------


class Keyring:
    """Every key one server accepts: `API_KEY`'s and `ADMIN_API_KEY`'s (unnamed, every
    right) and the keys file's named ones, with the gate of their limits."""

    def __init__(self, api_keys: Iterable[str] = (), admin_keys: Iterable[str] = (),
                 keys_file: KeysFile | None = None, gate: Gate | None = None) -> None:
        api = [hash_key(k).encode("ascii") for k in api_keys]
        self._admin = [hash_key(k).encode("ascii") for k in admin_keys]
        self.file = keys_file
        self.enabled = bool(api) or keys_file is not None
        self._unnamed = api + self._admin if self.enabled else []
        self.gate = gate or Gate()

    def identify(self, presented: bytes | None) -> Caller | None:
        """The caller a presented key makes (anonymous when no keys are set); None for a
        missing or wrong key. Every hash is compared, in constant time."""
        if not self.enabled:
            return Caller(None, self.gate)
        if presented is None:
            return None
        digest = hashlib.sha256(presented).hexdigest().encode("ascii")
        unnamed = admin = False
        for expected in self._unnamed:
            unnamed |= hmac.compare_digest(digest, expected)
        for expected in self._admin:
            admin |= hmac.compare_digest(digest, expected)
        named: NamedKey | None = None
        for key in self.file.keys if self.file is not None else ():
            if hmac.compare_digest(digest, key.digest):
                named = key
        if named is not None:
            return Caller(named, self.gate)
        if unnamed:
            return Caller(None, self.gate, admin_key=admin)
        return None


class Caller:
    """Who one request comes from: a named key (with its limits) or none (anonymous, or an
    unnamed key with every right). One per request, in its `lokal.logs` context."""

    def __init__(self, key: NamedKey | None, gate: Gate, *, admin_key: bool = False) -> None:
        self.key = key
        self.gate = gate
        self.admin_key = admin_key  # came with ADMIN_API_KEY
        self.admitted = False
        self.refused = False  # over a limit of its key: not served
        self.finished = False

    @property
    def name(self) -> str:
        """The key's name; "" for no key or an unnamed one."""
        return self.key.name if self.key is not None else ""

    @property
    def weight(self) -> float:
        return self.key.weight if self.key is not None else 1.0

    @property
    def restricted(self) -> bool:
        return self.key is not None and self.key.models is not None

    def allows(self, model: str) -> bool:
        return self.key is None or self.key.allows(model)

    def permit(self, name: str, served_as: Callable[[str], str | None]) -> None:
        """Raise ModelForbidden unless the key may use the model a request names, by that
        name or by the name of the model it resolves to (served_as: None when there is
        none, which is refused alike)."""
        if not self.restricted or self.allows(name):
            return
        served = served_as(name)
        if served is None or not self.allows(served):
            raise ModelForbidden(name)

    def admit(self) -> None:
        """Count this request against its key's limits, once however many models it leases."""
        if self.admitted or self.key is None or not self.key.limited:
            return
        try:
            self.gate.admit(self.key)
        except KeyLimitReached:
            self.refused = True
            raise
        self.admitted = True

    def finish(self, tokens: int) -> None:
        """The request is over, having used tokens (prompt + completion)."""
        if self.finished:
            return
        self.finished = True
        if self.key is not None and self.admitted:
            self.gate.done(self.key, tokens)


def current_caller() -> Caller | None:
    """The caller of the request being served here (None outside requests)."""
    context = logs.current()
    caller = context.caller if context is not None else None
    return caller if isinstance(caller, Caller) else None
