"""The web UI's Images view in Debian's chromium, against a real server with the tiny pipeline."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LokalServer
from tests.images.conftest import image_models, tiny_sd  # noqa: F401 - the session fixture
from tests.ui.conftest import UI, screenshot

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def images_ui_server(tmp_path_factory: pytest.TempPathFactory, tiny_sd: Path) -> Iterator[LokalServer]:  # noqa: F811
    models = image_models(tmp_path_factory.mktemp("ui-images") / "models", tiny_sd, "tiny")
    with LokalServer(models, "--image-max-side", "128", "--preload-models", "tiny") as server:
        server.wait_ready(timeout=300)
        yield server


@pytest.fixture
def images_ui(browser: object, images_ui_server: LokalServer) -> Iterator[UI]:
    session = UI(browser, images_ui_server, {"width": 1200, "height": 900})
    yield session
    session.close()
    session.watch.check()


def fill(page: object, *, steps: int = 3, n: int = 2, seed: str = "11", width: int = 64) -> None:
    page.fill("#img-prompt", "a red cat")  # type: ignore[attr-defined]
    page.fill("#img-negative", "blurry")  # type: ignore[attr-defined]
    page.fill("#img-width", str(width))  # type: ignore[attr-defined]
    page.fill("#img-height", "64")  # type: ignore[attr-defined]
    page.fill("#img-steps", str(steps))  # type: ignore[attr-defined]
    page.fill("#img-seed", seed)  # type: ignore[attr-defined]
    page.fill("#img-n", str(n))  # type: ignore[attr-defined]


def test_images_are_made_with_progress_shown_in_a_grid_with_downloads(images_ui: UI) -> None:
    from PIL import Image

    page = images_ui.open("images")
    assert page.locator("#page-images").is_visible()  # type: ignore[attr-defined]
    assert page.locator("#img-model option").all_inner_texts() == ["tiny"]  # type: ignore[attr-defined]
    fill(page)
    seen: list[float] = []
    page.expose_function("noteProgress", lambda value: seen.append(value))  # type: ignore[attr-defined]
    page.evaluate("""() => new MutationObserver(() => window.noteProgress(
        document.getElementById('img-progress').value / document.getElementById('img-progress').max))
        .observe(document.getElementById('img-status'), {childList: true, characterData: true, subtree: true})""")  # type: ignore[attr-defined]
    page.click("#img-generate")  # type: ignore[attr-defined]
    page.wait_for_selector("#img-results li:not(.preview) >> nth=1")  # type: ignore[attr-defined]
    page.wait_for_selector("#img-generate:not([hidden])")  # type: ignore[attr-defined]
    assert "2 images" in page.inner_text("#img-status")  # type: ignore[attr-defined]
    assert any(0 < v < 1 for v in seen) and page.evaluate(  # type: ignore[attr-defined]
        "document.getElementById('img-progress').value === document.getElementById('img-progress').max")
    cards = page.locator("#img-results li")  # type: ignore[attr-defined]
    assert cards.count() == 2
    sources = []
    for number in range(2):
        card = cards.nth(number)
        source = card.locator("img").get_attribute("src")
        assert source.startswith("data:image/png;base64,")
        picture = Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1])))
        assert picture.size == (64, 64)
        link = card.locator("a")
        assert link.get_attribute("download").endswith(".png") and link.get_attribute("href") == source
        sources.append(source)
        assert f"seed {11 + number}" in card.inner_text()
    assert sources[0] != sources[1]
    with page.expect_download() as download:  # type: ignore[attr-defined]
        cards.nth(0).locator("a").click()
    saved = Path(download.value.path())
    assert saved.read_bytes() == base64.b64decode(sources[0].split(",", 1)[1])
    screenshot(page, "images")


def test_stop_ends_the_generation_and_errors_are_shown(images_ui: UI) -> None:
    page = images_ui.open("images")
    fill(page, steps=150, n=1)
    page.click("#img-generate")  # type: ignore[attr-defined]
    page.wait_for_selector("#img-status:has-text('step')")  # type: ignore[attr-defined]
    page.click("#img-stop")  # type: ignore[attr-defined]
    page.wait_for_selector("#img-generate:not([hidden])")  # type: ignore[attr-defined]
    assert "Stopped" in page.inner_text("#img-status")  # type: ignore[attr-defined]
    assert page.locator("#img-results li").count() == 0  # type: ignore[attr-defined]
    images_ui.server.wait_log("image generation stopped at step", timeout=120)
    # A size over the server's largest side (the form itself takes it): the server's words, no card.
    images_ui.watch.expected_console.append(r"400")
    fill(page, steps=2, n=1, width=256)
    page.click("#img-generate")  # type: ignore[attr-defined]
    page.wait_for_selector("#img-status.error")  # type: ignore[attr-defined]
    assert "between 8 and 128 pixels" in page.inner_text("#img-status")  # type: ignore[attr-defined]
    assert page.locator("#img-results li").count() == 0  # type: ignore[attr-defined]
