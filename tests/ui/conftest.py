"""The web UI in a real browser: Playwright driving Debian's chromium against real lokal servers.

The browser reaches nothing but the lokal server under test: every other URL is routed
to abort and recorded, and each test asserts none was attempted. Console errors and
uncaught page errors fail the test (a test that provokes an error answer on purpose
names the console lines it expects).

Screenshots: with UI_SCREENSHOTS=<folder> set, the tests that show each page save
palette-compressed PNGs there (`UI_SCREENSHOTS=docs/ui` refreshes the README's).
"""

from __future__ import annotations

import io
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.conftest import LokalServer, place_folder, place_model, smollm_gguf
from tests.install.conftest import Fixture, sha

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
CHAT = "smol"
TTS = "en_US-joe-medium.onnx"
EMBED = "minilm"
STT = "whisper-1"
INSTALLED = "tiny-chat"
SLOW = "slow-chat"
BAD = "bad-chat"
FOX_WAV = Path(__file__).resolve().parent.parent / "fixtures" / "quick-brown-fox.wav"


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        if os.geteuid() != 0:
            pytest.skip("Debian's chromium is not installed and this is not root, so python3 dev.py "
                        "test could not install it: apt-get install -y chromium")
        pytest.fail("the UI tests need Debian's chromium: apt-get install -y chromium "
                    "(python3 dev.py test installs it)")
    return path


@pytest.fixture(scope="package")  # Playwright's sync API holds an event loop while it runs: gone
def browser() -> Iterator[object]:  # after tests/ui, so a later test's asyncio.run() still works
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the UI tests need Playwright: pip install playwright (lokal[test] has it)")
    with sync_playwright() as p:
        # Playwright starts chromium with a fresh temporary profile (user data dir) and
        # removes it at close; its own browser download is not used (nor reachable).
        browser = p.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


# Servers ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def gallery() -> Iterator[Fixture]:
    """A loopback gallery whose entry serves the SmolLM2 file slowly enough to watch."""
    fx = Fixture()
    data = smollm_gguf().read_bytes()
    url = fx.add(f"/files/{INSTALLED}.gguf", data, rate=25_000_000)
    slow = fx.add(f"/files/{SLOW}.gguf", data, rate=2_000_000)
    bad = fx.add(f"/files/{BAD}.gguf", data)

    def entry(name: str, uri: str, digest: str, description: str) -> dict:
        return {"name": name, "description": description, "tags": ["tiny", "chat"],
                "config_file": {"context_size": 512, "parameters": {"model": f"{name}.gguf"}},
                "files": [{"filename": f"{name}.gguf", "uri": uri, "sha256": digest}]}

    fx.add("/index.yaml", yaml.safe_dump([
        entry(INSTALLED, url, sha(data), "SmolLM2 135M from a loopback gallery"),
        entry(SLOW, slow, sha(data), "the same, served slowly (to cancel)"),
        entry(BAD, bad, "0" * 64, "the same with a wrong checksum")]).encode())
    yield fx
    fx.close()


@pytest.fixture(scope="session")
def ui_server(tmp_path_factory: pytest.TempPathFactory, gallery: Fixture) -> Iterator[LokalServer]:
    """The demo models: SmolLM2 chat, MiniLM embeddings (a folder), Whisper, a Piper voice and
    a broken entry."""
    from tests.api.test_transcriptions import place_whisper
    from tests.speech.conftest import place_joe

    models = tmp_path_factory.mktemp("ui") / "models"
    place_model(models, "smol.gguf")
    (models / f"{CHAT}.yaml").write_text(f"name: {CHAT}\nparameters:\n  model: smol.gguf\ncontext_size: 1024\n")
    place_folder(models, "minilm")
    (models / f"{EMBED}.yaml").write_text(
        f"name: {EMBED}\nbackend: sentence-transformers\nparameters:\n  model: minilm\n")
    place_whisper(models, "whisper")
    (models / "whisper-1.yaml").write_text(f"name: {STT}\nbackend: whisper\nparameters:\n  model: whisper\n")
    place_joe(models)
    (models / "broken.yaml").write_text("name: broken\nparameters:\n  model: missing.gguf\n")
    env = {"ALLOWED_DOWNLOAD_HOSTS": "127.0.0.1",
           "GALLERIES": f'[{{"name": "test", "url": "{gallery.base}/index.yaml"}}]'}
    with LokalServer(models, "--preload-models", CHAT, env=env) as server:
        server.wait_ready(timeout=120)
        yield server


@pytest.fixture(scope="session")
def key_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LokalServer]:
    models = tmp_path_factory.mktemp("ui-keys") / "models"
    place_folder(models, "minilm")
    (models / f"{EMBED}.yaml").write_text(
        f"name: {EMBED}\nbackend: sentence-transformers\nparameters:\n  model: minilm\n")
    with LokalServer(models, env={"API_KEY": "sk-right"}) as server:
        yield server


# Pages -----------------------------------------------------------------------


@dataclass
class Watch:
    """What the page did that a test may not want: console errors, page errors, other hosts."""

    base: str
    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    expected_console: list[str] = field(default_factory=list)  # regexes a test allows

    def check(self) -> None:
        unexpected = [c for c in self.console
                      if not any(re.search(p, c) for p in self.expected_console)]
        assert not unexpected, f"console errors: {unexpected}"
        assert not self.errors, f"page errors: {self.errors}"
        assert not self.outside, f"the page tried to reach other hosts: {self.outside}"


class UI:
    def __init__(self, browser: object, server: LokalServer, viewport: dict[str, int]) -> None:
        self.server = server
        self.watch = Watch(server.base)
        self.context = browser.new_context(viewport=viewport)  # type: ignore[attr-defined]
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.set_default_timeout(60_000)
        self.page.on("console", lambda m: m.type == "error" and self.watch.console.append(m.text))
        self.page.on("pageerror", lambda e: self.watch.errors.append(str(e)))

    def _route(self, route: object) -> None:
        url = route.request.url  # type: ignore[attr-defined]
        if url == self.watch.base or url.startswith(self.watch.base + "/"):
            route.continue_()  # type: ignore[attr-defined]
        else:
            self.watch.outside.append(url)
            route.abort()  # type: ignore[attr-defined]

    def open(self, page: str = "chat") -> object:
        self.page.goto(f"{self.server.base}/ui/#{page}")
        self.page.wait_for_selector("body[data-ready=true]")
        return self.page

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def ui(browser: object, ui_server: LokalServer) -> Iterator[UI]:
    session = UI(browser, ui_server, {"width": 1200, "height": 800})
    yield session
    session.close()
    session.watch.check()


@pytest.fixture
def phone(browser: object, ui_server: LokalServer) -> Iterator[UI]:
    session = UI(browser, ui_server, {"width": 390, "height": 844})
    yield session
    session.close()
    session.watch.check()


def screenshot(page: object, name: str) -> None:
    """A palette PNG of the page in UI_SCREENSHOTS (when set)."""
    folder = os.environ.get("UI_SCREENSHOTS")
    if not folder:
        return
    from PIL import Image

    raw = page.screenshot(full_page=False)  # type: ignore[attr-defined]
    image = Image.open(io.BytesIO(raw)).convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    Path(folder).mkdir(parents=True, exist_ok=True)
    image.save(Path(folder) / f"{name}.png", optimize=True)
