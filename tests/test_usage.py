"""The usage ledger on its own: windows, per-key sums, minute buckets folded into hours."""

from __future__ import annotations

from lokal.usage import HOUR, MINUTE_RETENTION, Counts, UsageLedger


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_windows_sum_the_buckets_they_overlap() -> None:
    clock = Clock(1_000_000 * 60.0)  # on a minute boundary
    ledger = UsageLedger(clock)
    start = clock.now
    ledger.record("a", "m1", Counts(1, 10, 5))
    clock.now += 30
    ledger.record("a", "m2", Counts(1, 3, 0, audio_seconds=2.5))
    clock.now += 60  # the next minute
    ledger.record("b", "m1", Counts(1, 7, 1, images=2))
    whole = ledger.query()
    assert whole["data"] == [
        {"key": "a", "model": "m1", "requests": 1, "prompt_tokens": 10, "completion_tokens": 5,
         "audio_seconds": 0.0, "images": 0},
        {"key": "a", "model": "m2", "requests": 1, "prompt_tokens": 3, "completion_tokens": 0,
         "audio_seconds": 2.5, "images": 0},
        {"key": "b", "model": "m1", "requests": 1, "prompt_tokens": 7, "completion_tokens": 1,
         "audio_seconds": 0.0, "images": 2}]
    assert [(k["key"], k["requests"], k["prompt_tokens"]) for k in whole["keys"]] == [("a", 2, 13), ("b", 1, 7)]
    first_minute = ledger.query(start, start + 60)
    assert {(r["key"], r["model"]) for r in first_minute["data"]} == {("a", "m1"), ("a", "m2")}
    assert [r["key"] for r in ledger.query(start + 60, start + 120)["data"]] == ["b"]
    assert ledger.query(start - 3600, start - 60)["data"] == []


def test_old_minutes_fold_into_hours() -> None:
    clock = Clock(1_000_000 * 3600.0)  # on an hour boundary
    ledger = UsageLedger(clock)
    start = clock.now
    for minute in range(3):
        ledger.record("a", "m", Counts(1, 1, 1), at=start + minute * 60)
    clock.now = start + MINUTE_RETENTION + 2 * HOUR
    ledger.record("a", "m", Counts(1, 100, 0))  # a new minute: the old ones are folded
    assert len(ledger._hours) == 1 and len(ledger._minutes) == 1
    old = ledger.query(start, start + HOUR)["data"]
    assert [(r["requests"], r["prompt_tokens"]) for r in old] == [(3, 3)]
    assert ledger.query(start, clock.now + 1)["keys"][0]["requests"] == 4
