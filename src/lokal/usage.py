"""Usage per API key and model, over time: what `GET /lokal/usage` answers from.

Every request that used a model is recorded once, when it has ended, from its
`lokal.logs` context (the key's name, the model, the tokens its answer reported,
audio seconds, images). Records are summed into one-minute buckets; buckets
older than `MINUTE_RETENTION` are folded into one-hour buckets, kept for
`HOUR_RETENTION`. A window (`since`, `until`) sums the buckets that overlap it,
so its edges are exact to the minute for the last two days and to the hour
before. In memory: since the server started (Prometheus' counters, labelled the
same way, keep the history).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

MINUTE = 60
HOUR = 3600
MINUTE_RETENTION = 2 * 24 * HOUR
HOUR_RETENTION = 90 * 24 * HOUR


@dataclass
class Counts:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    audio_seconds: float = 0.0
    images: int = 0

    def add(self, other: Counts) -> None:
        self.requests += other.requests
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.audio_seconds += other.audio_seconds
        self.images += other.images


Bucket = dict[tuple[str, str], Counts]  # (key name, model) -> counts


class UsageLedger:
    """Usage counts per (key, model) in time buckets, for one app (on its event loop)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.started = clock()
        self._minutes: dict[int, Bucket] = {}
        self._hours: dict[int, Bucket] = {}

    def record(self, key: str, model: str, counts: Counts, at: float | None = None) -> None:
        now = self.clock() if at is None else at
        minute = int(now // MINUTE) * MINUTE
        bucket = self._minutes.get(minute)
        if bucket is None:
            bucket = self._minutes[minute] = {}
            self._fold(now)
        bucket.setdefault((key, model), Counts()).add(counts)

    def _fold(self, now: float) -> None:
        """Minute buckets past their retention into hour buckets; drop hours past theirs."""
        for minute in [m for m in self._minutes if m < now - MINUTE_RETENTION]:
            hour = self._hours.setdefault(minute // HOUR * HOUR, {})
            for pair, counts in self._minutes.pop(minute).items():
                hour.setdefault(pair, Counts()).add(counts)
        for hour_start in [h for h in self._hours if h < now - HOUR_RETENTION]:
            del self._hours[hour_start]

    def query(self, since: float | None = None, until: float | None = None) -> dict[str, Any]:
        """Usage in the buckets overlapping [since, until): per key and model, and per key."""
        since = self.started if since is None else since
        until = self.clock() if until is None else until
        total: Bucket = {}
        for buckets, length in ((self._hours, HOUR), (self._minutes, MINUTE)):
            for start, bucket in buckets.items():
                if start < until and start + length > since:  # the bucket overlaps the window
                    for pair, counts in bucket.items():
                        total.setdefault(pair, Counts()).add(counts)
        data = [{"key": key, "model": model, **_rounded(counts)}
                for (key, model), counts in sorted(total.items())]
        per_key: dict[str, Counts] = {}
        for (key, _model), counts in total.items():
            per_key.setdefault(key, Counts()).add(counts)
        return {"object": "usage", "since": since, "until": until, "data": data,
                "keys": [{"key": key, **_rounded(counts)} for key, counts in sorted(per_key.items())]}


def _rounded(counts: Counts) -> dict[str, Any]:
    out = asdict(counts)
    out["audio_seconds"] = round(counts.audio_seconds, 3)
    return out
