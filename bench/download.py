"""Download throughput: lokal's downloader vs curl, same file, same loopback fixture, same run;
and the CPU cost of the terminal progress display.

    python bench/download.py [--mb 256] [--runs 5]

Prints MB/s for each and the ratio lokal/curl (target >= 0.9): --runs rounds in ABBA
order, the ratio the median of per-pair ratios with its spread, then the process CPU
seconds of a download with and without the progress bar drawing to a (fake) terminal.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]  # lokal from this checkout, and the tests' fixture

from lokal.cli.install import ProgressDisplay  # noqa: E402
from lokal.transfer.downloader import Downloader  # noqa: E402
from lokal.install.jobs import ProgressEvent  # noqa: E402
from tests.install.conftest import Fixture, blob, policy_for  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _pairs import Ratio, Samples, abba  # noqa: E402 - bench/_pairs.py


def lokal_fetch(fixture: Fixture, url: str, folder: Path, display: ProgressDisplay | None = None) -> float:
    target = folder / "lokal.bin"
    target.unlink(missing_ok=True)
    progress = None
    if display is not None:
        def progress(done: int, total: int | None) -> None:
            display(ProgressEvent(job="b", status="downloading", message="", file_name="file.bin",
                                  total=total, completed=done, file_index=1, file_count=1))
    started = time.perf_counter()
    Downloader(policy_for(fixture)).fetch(url, target, on_progress=progress)
    return time.perf_counter() - started


def curl_fetch(url: str, folder: Path) -> float:
    target = folder / "curl.bin"
    started = time.perf_counter()
    subprocess.run(["curl", "-s", "-o", str(target), url], check=True)
    return time.perf_counter() - started


def cpu_of(fn) -> float:  # noqa: ANN001
    """CPU seconds of this process (all threads) while fn runs."""
    before = time.process_time()
    fn()
    return time.process_time() - before


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    size = args.mb << 20
    # The fixture serves from its own process, so it competes with neither client for the GIL.
    parent, child = multiprocessing.Pipe()
    server = multiprocessing.Process(target=_serve, args=(child, size), daemon=True)
    server.start()
    base = parent.recv()
    url = f"{base}/file.bin"
    fixture = _Remote(base)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        mb = size / 1e6
        rates = Samples()
        fetch = {"curl": lambda: curl_fetch(url, folder), "lokal": lambda: lokal_fetch(fixture, url, folder)}
        for round_ in range(args.runs):  # A B B A, then B A A B: drift cannot land on one side
            for name in abba(["curl", "lokal"], round_):
                rates.add(name, round_, mb / fetch[name]())
        print(f"file: {args.mb} MiB from {fixture.base}, {args.runs} ABBA rounds, medians")
        for name in ("curl", "lokal"):
            print(f"{name + ':':<7}{rates.median(name):8.1f} MB/s  (runs: {', '.join(f'{r:.0f}' for r in rates.of(name))})")
        print(Ratio("ratio lokal/curl (per pair)", rates.ratios("lokal", "curl"), 0.9).line(28))
        plain = cpu_of(lambda: lokal_fetch(fixture, url, folder))
        screen = io.StringIO()
        shown = cpu_of(lambda: lokal_fetch(fixture, url, folder, ProgressDisplay(screen, tty=True)))
        draws = screen.getvalue().count("\r")
        print(f"CPU seconds of the downloading process: without progress "
              f"{plain:.3f}, with the terminal bar {shown:.3f} ({draws} redraws); difference "
              f"{shown - plain:+.3f} s")
    server.terminate()


def _serve(conn, size: int) -> None:  # noqa: ANN001
    fixture = Fixture()
    fixture.add("/file.bin", blob(size))
    conn.send(fixture.base)
    threading.Event().wait()


class _Remote:
    """What policy_for needs of a fixture running in another process."""

    def __init__(self, base: str) -> None:
        self.base = base


if __name__ == "__main__":
    sys.exit(main())
