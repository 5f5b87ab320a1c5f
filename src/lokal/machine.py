"""Facts about the machine this process runs on that settings' defaults depend on."""

from __future__ import annotations

import os
from pathlib import Path


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads counted once)."""
    try:
        usable = os.sched_getaffinity(0)
    except AttributeError:  # pragma: no cover - not Linux
        usable = set(range(os.cpu_count() or 1))
    cores: set[str] = set()
    for cpu in usable:
        base = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            package = (base / "physical_package_id").read_text().strip()
            core = (base / "core_id").read_text().strip()
        except OSError:
            cores.add(f"cpu{cpu}")
            continue
        cores.add(f"{package}:{core}")
    return max(1, len(cores))
