"""Sizes and durations as people write and read them: one reader for each (`512M`, `20G`,
`15m`, `1h30m`), and one way of writing a byte count for messages, logs and LocalAI's job
status (`1.2 GB`: decimal units, as LocalAI and download tools write them)."""

from __future__ import annotations

import re
from typing import Any


def format_size(size: float | None) -> str:
    """1.2 GB style sizes (decimal units; "?" for an unknown size)."""
    if size is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"  # pragma: no cover


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any) -> float | None:
    """Seconds from a number or a Go-style duration such as ``15m`` or ``1h30m``.

    ``None``, ``""``, ``0`` and ``"off"`` mean disabled.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        if text in ("", "off", "false", "none", "0"):
            return None
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError(f"not a duration: {value!r} (use seconds or e.g. 15m, 1h30m)")
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds or None


_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?$")


def parse_size(value: Any) -> int | None:
    """Bytes from a number or a size such as ``512M`` or ``20G`` (binary units); 0: none."""
    match = _SIZE.match(str(value).strip().lower())
    if not match:
        raise ValueError(f"not a size: {value!r} (use bytes or e.g. 512M, 20G)")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[match.group(2)]
    return int(float(match.group(1)) * scale) or None
