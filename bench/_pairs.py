"""Comparing systems on a machine whose speed drifts: ABBA order and per-pair ratios.

These shared virtual machines speed up and slow down by 10-30% over minutes, with
no process to blame. Measured in a fixed order (all of A, then all of B), the drift
lands on one side and a ratio of medians moves with it. So every bench that
compares systems runs them phase by phase in ABBA order within each round (A B B A,
or A B C C B A for three), the order reversed from one round to the next (B A A B),
and compares each system's k-th measurement of a round with the other's k-th of
the same round: the two sit next to each other in time, so drift cancels out of
their ratio. A ratio is reported as the median of these per-pair ratios with
their spread (min and max, and how many pairs).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


def abba(systems: Sequence[str], round_no: int) -> list[str]:
    """The order of one round: forward then backward (A B B A); reversed every other round."""
    order = list(systems) if round_no % 2 == 0 else list(reversed(systems))
    return order + list(reversed(order))


@dataclass
class Samples:
    """Measurements of one quantity (a phase) of each system, keyed by round and by the
    system's occurrence within the round (0 for its first slot, 1 for its mirrored one)."""

    values: dict[str, dict[tuple[int, int], float]] = field(default_factory=dict)

    def add(self, system: str, round_no: int, value: float | None) -> None:
        if value is None:
            return
        slots = self.values.setdefault(system, {})
        occurrence = sum(1 for (r, _) in slots if r == round_no)
        slots[(round_no, occurrence)] = value

    def of(self, system: str) -> list[float]:
        return list(self.values.get(system, {}).values())

    def median(self, system: str) -> float | None:
        values = self.of(system)
        return statistics.median(values) if values else None

    def ratios(self, num: str, den: str) -> list[float]:
        """num / den for each slot both measured (same round, same occurrence)."""
        a, b = self.values.get(num, {}), self.values.get(den, {})
        return [a[key] / b[key] for key in sorted(a.keys() & b.keys()) if b[key]]


@dataclass
class Ratio:
    label: str
    pairs: list[float]
    target: float | None = None
    higher_is_better: bool = True

    @property
    def median(self) -> float | None:
        return statistics.median(self.pairs) if self.pairs else None

    @property
    def spread(self) -> tuple[float, float] | None:
        return (min(self.pairs), max(self.pairs)) if self.pairs else None

    @property
    def verdict(self) -> str:
        value = self.median
        if value is None or self.target is None:
            return "n/a" if value is None else ""
        ok = value >= self.target if self.higher_is_better else value <= self.target
        return "PASS" if ok else "FAIL"

    def line(self, width: int = 44) -> str:
        value, spread = self.median, self.spread
        if value is None or spread is None:
            return f"{self.label:<{width}}     n/a  (no pairs)"
        target = "" if self.target is None else f"  (target {'>=' if self.higher_is_better else '<='} {self.target})"
        return (f"{self.label:<{width}} {value:7.3f}  [{spread[0]:.3f}-{spread[1]:.3f}, {len(self.pairs)} pairs]"
                f"{target}  {self.verdict}").rstrip()

    def as_dict(self) -> dict[str, Any]:
        return {"ratio": self.label, "median": self.median, "min": self.spread[0] if self.spread else None,
                "max": self.spread[1] if self.spread else None, "pairs": self.pairs, "target": self.target,
                "verdict": self.verdict}
