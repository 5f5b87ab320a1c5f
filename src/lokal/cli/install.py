"""`lokal models install | search | rm`: the install job system from a terminal.

On a terminal each file gets a progress bar (size, speed, ETA) redrawn at most ten
times a second; otherwise plain log lines (start, every 25 %, done). Ctrl-C cancels
the job cleanly: the partial file stays hidden in the models folder and the next
`lokal models install` of the same model resumes it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from typing import Any, TextIO

from lokal.errors import LokalError
from lokal.units import format_size
from lokal.install.jobs import ProgressEvent
from lokal.install.manager import InstallManager
from lokal.settings import Settings


class ProgressDisplay:
    """Renders a job's events: bars on a TTY, log lines elsewhere."""

    def __init__(self, stream: TextIO, tty: bool | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.file: str | None = None
        self.started = 0.0
        self.last_draw = 0.0
        self.next_share = 25
        self.width = 0

    def __call__(self, event: ProgressEvent) -> None:
        now = time.monotonic()
        if event.file_name != self.file and event.status == "downloading":
            self._end_file()
            self.file, self.started, self.next_share, self.last_draw = event.file_name, now, 25, 0.0
            if not self.tty:
                self._line(f"downloading {event.file_name} ({format_size(event.total)}) "
                           f"[{event.file_index}/{event.file_count}]")
        if event.status == "downloading" and event.completed is not None:
            if self.tty:
                if now - self.last_draw >= 0.1 or event.completed == event.total:
                    self.last_draw = now
                    self._draw(event, now)
            elif event.total and event.completed * 100 >= self.next_share * event.total \
                    and event.completed < event.total:
                self._line(f"{event.file_name}: {100 * event.completed // event.total}% "
                           f"({format_size(event.completed)} of {format_size(event.total)})")
                self.next_share = 100 * event.completed // event.total // 25 * 25 + 25
        if event.finished or event.status == "installing":
            self._end_file()

    def _draw(self, event: ProgressEvent, now: float) -> None:
        elapsed = max(now - self.started, 1e-6)
        speed = (event.completed or 0) / elapsed
        total, done = event.total, event.completed or 0
        if total:
            share = done / total
            bar = "#" * int(share * 24)
            eta = (total - done) / speed if speed > 0 else 0
            text = (f"\r{event.file_name[:40]:<40} [{bar:<24}] {share * 100:5.1f}% "
                    f"{format_size(done)}/{format_size(total)} {format_size(speed)}/s ETA {_clock(eta)}")
        else:
            text = f"\r{event.file_name[:40]:<40} {format_size(done)} {format_size(speed)}/s"
        pad = max(0, self.width - len(text))
        self.width = len(text)
        self.stream.write(text + " " * pad)
        self.stream.flush()

    def _end_file(self) -> None:
        if self.file is None:
            return
        seconds = time.monotonic() - self.started
        if self.tty:
            self.stream.write("\n")
        else:
            self._line(f"{self.file}: done in {seconds:.1f} s")
        self.file = None

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


def add_parsers(model_commands: Any, add_settings: Any) -> None:
    install = model_commands.add_parser(
        "install", help="install a model from a gallery, Hugging Face or a URL",
        description="Install a model: a gallery entry (NAME or GALLERY@NAME), "
                    "huggingface://owner/repo/file, hf://owner/repo[:QUANT], an https URL of a "
                    ".gguf, or a LocalAI model config (github:owner/repo/path.yaml@branch, https or "
                    "file://). Interrupted downloads resume on the next run.")
    install.add_argument("ref", metavar="NAME_OR_REF")
    install.add_argument("--name", help="install under this model name")
    install.add_argument("--force", action="store_true", help="replace a model of that name")
    install.add_argument("--variant", help="a gallery entry's build to install (one of its `variants`; "
                                           "default: the entry itself)")
    add_settings(install)
    install.set_defaults(handler=cmd_install)
    search = model_commands.add_parser("search", help="search the galleries",
                                       description="List gallery entries whose name, description "
                                                   "or tags contain every word of TEXT.")
    search.add_argument("text", nargs="*", metavar="TEXT")
    add_settings(search)
    search.set_defaults(handler=cmd_search)
    remove = model_commands.add_parser("rm", help="delete an installed model",
                                       description="Delete a model's config and the files lokal "
                                                   "installed for it (files other models use stay).")
    remove.add_argument("name", metavar="NAME")
    add_settings(remove)
    remove.set_defaults(handler=cmd_remove)


def _manager(settings: Settings) -> InstallManager:
    return InstallManager.from_settings(settings, allow_file=True)


def cmd_install(settings: Settings, args: argparse.Namespace) -> int:
    async def run() -> int:
        manager = _manager(settings)
        display = ProgressDisplay(sys.stderr)
        job = manager.start(args.ref, name=args.name, force=args.force, variant=args.variant)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, job.cancel)
        try:
            async for event in job.events():
                display(event)
        finally:
            loop.remove_signal_handler(signal.SIGINT)
        if job.status == "done":
            print(f"installed {job.name} into {settings.models_path}")
            return 0
        if job.status == "cancelled":
            print("lokal models install: cancelled; run the same command again to resume",
                  file=sys.stderr)
            return 130
        print(f"lokal models install: {job.error.message if job.error else job.message}", file=sys.stderr)
        return 1

    try:
        return asyncio.run(run())
    except LokalError as exc:
        print(f"lokal models install: {exc.message}", file=sys.stderr)
        return 1


def cmd_search(settings: Settings, args: argparse.Namespace) -> int:
    manager = _manager(settings)
    try:
        entries = manager.galleries.search(" ".join(args.text))
    except LokalError as exc:
        print(f"lokal models search: {exc.message}", file=sys.stderr)
        return 1
    installed = manager.installed_names()
    if not entries:
        print("no gallery entries match")
        return 1
    width = max(len(f"{e.gallery.name}@{e.name}") for e in entries)
    for entry in entries:
        mark = "installed" if entry.name in installed else ""
        print(f"{entry.gallery.name + '@' + entry.name:<{width}}  {mark:<9}  {entry.description}")
    return 0


def cmd_remove(settings: Settings, args: argparse.Namespace) -> int:
    try:
        job = _manager(settings).remove(args.name)
    except LokalError as exc:
        print(f"lokal models rm: {exc.message}", file=sys.stderr)
        return 1
    for path in job.removed:
        print(f"removed {path}")
    for note in job.kept:
        print(f"kept {note}")
    return 0
