"""Who a request comes from, and each named key's limits (the keys themselves: `lokal.keys`).

A request's `Caller` (one per request, in its `lokal.logs` context) says which
key it came with; the model registry asks it whether a model may be used
(`permit`: 403 whether or not the model exists) and admits the request against
the key's limits once (`admit`: 429 naming the limit, with Retry-After). The
per-key counters behind those limits live in one `Gate` per app. A presented key
is hashed and compared with every hash in constant time (`hmac.compare_digest`,
never an early exit).
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from lokal import logs
from lokal.errors import Busy, Forbidden
from lokal.keys import LIMITS, KeysFile, NamedKey, hash_key

WINDOW = 60.0  # seconds: the "minute" of the per-minute limits


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
