"""Chaos soak, a few minutes of it: every API family from several keys, streamed and
whole, more models than MAX_ACTIVE_BACKENDS, engine workers SIGKILLed at random and
installs started and cancelled (bench/chaos.py, which runs it for longer).

Every request ends in a complete answer or a clear error in its family's envelope;
clear errors are only on killed engines or the limited key's deliberate 429s; the
server's open files and threads come back to their level after each wave (every
model unloaded), no worker process is left over, and its RSS stays near its level.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import chaos

pytestmark = pytest.mark.slow  # minutes of mixed traffic and model loads on two cores

DURATION = 180.0
WAVE = 60.0
#: the engine kinds the chaos models folder uses
ENGINE_KINDS = ("llama-cpp", "sentence-transformers", "whisper", "piper")
RSS_DRIFT_MB = 64  # the server's RSS after the last wave over the first (no model is in it)


@pytest.mark.timeout(1500)
def test_every_family_through_kills_churn_and_cancelled_installs(tmp_path: Path) -> None:
    options = chaos.parse_args(["--duration", str(DURATION), "--wave", str(WAVE), "--clients", "6",
                                "--kill-every", "12", "--install-every", "10", "--request-timeout", "400"])
    report = chaos.run(options, tmp_path)
    chaos.print_report(report)

    assert report["server_alive"], report["log"]
    for name, family in report["families"].items():
        assert family["requests"] > 0, name
        assert family["other"] == 0, (name, report["problems"])
        assert family["unexplained"] == 0, (name, report["problems"])  # all else succeeded
    assert sum(f["ok"] for f in report["families"].values()) > 0
    assert any(f["streamed"] for f in report["families"].values())
    assert report["kills"], "no worker was killed"
    assert report["installs"].get("started", 0) >= 1 and not report["install_problems"], report["installs"]
    assert len(report["waves"]) >= 2
    for wave in report["waves"]:
        assert wave["workers_left"] == 0, wave
    first = report["waves"][0]
    for wave in report["waves"][1:]:
        assert wave["fds"] <= first["fds"] + 2, report["waves"]  # a socket or two may be closing
        # asyncio's default executor starts its threads lazily (up to cores + 4) and keeps them
        assert wave["threads"] <= first["threads"] + (os.cpu_count() or 1) + 4, report["waves"]
        assert wave["fd_kinds"].get("pipe") == first["fd_kinds"].get("pipe"), report["waves"]
    assert report["drift"]["rss_mb"] < RSS_DRIFT_MB, report["waves"]
