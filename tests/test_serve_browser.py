"""The page of ``lit-mnist serve`` in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

It draws a "1" (a vertical stroke) and a "0" (a closed loop) on the canvas with the mouse, reads the class
shown in ``#prediction``, and uploads a real MNIST test image through the page's file input. It needs the
model trained on the real MNIST (``slow``); without a chromium binary it is skipped with the reason.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningServer
from tests.test_serve import real_mnist_model, real_test_pngs, serve_command

pytest.importorskip("litserve", reason="serve needs the serve extra: pip install -e '.[serve]'")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the browser test needs playwright (the dev extra)"
)

#: Debian's chromium package (``apt-get install chromium``).
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
def browser_page(
    real_data_dir: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    if not Path(CHROMIUM).is_file():
        pytest.skip(
            f"no chromium binary at {CHROMIUM} (Debian: apt-get install chromium; .ci/run installs it)"
        )
    model = real_mnist_model(str(real_data_dir), str(tmp_path_factory.getbasetemp() / "real_mnist_logs"))
    server = RunningServer(serve_command(model), "/health", tmp_path / "server.log", timeout=120)
    with server as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 760})
            page.goto(url + "/")
            page.wait_for_selector("#bars li")  # /info read: the classes are shown
            yield page
        finally:
            browser.close()


def draw(page: Any, points: list[tuple[float, float]]) -> None:
    """Draw one stroke through ``points`` (fractions of the canvas) with the mouse."""
    box = page.locator("canvas").bounding_box()
    at = [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in points]
    page.mouse.move(*at[0])
    page.mouse.down()
    for x, y in at[1:]:
        page.mouse.move(x, y, steps=3)
    page.mouse.up()


def shown_class(page: Any, previous: str = "") -> str:
    """The class ``#prediction`` shows once the answer to the last stroke has arrived."""
    page.wait_for_function(
        "previous => { const p = document.getElementById('prediction').textContent.trim();"
        " return p !== '\u2013' && p !== previous; }",
        arg=previous,
        timeout=20_000,
    )
    page.wait_for_timeout(600)  # answers to earlier moves of the stroke may still arrive
    return page.locator("#prediction").inner_text().strip()


@pytest.mark.slow
def test_the_page_reads_a_drawn_one_and_zero_and_an_uploaded_image(
    browser_page: Any, real_data_dir: Path, tmp_path: Path
) -> None:
    page = browser_page
    assert page.locator("canvas").count() == 1

    draw(page, [(0.5, 0.18 + 0.64 * i / 10) for i in range(11)])  # a vertical stroke
    one = shown_class(page)
    assert one.split(" ")[0] == "1", one

    page.get_by_role("button", name="Clear").click()
    assert page.locator("#prediction").inner_text().strip() == "\u2013"
    loop = [
        (0.5 + 0.22 * math.sin(2 * math.pi * t / 24), 0.5 - 0.32 * math.cos(2 * math.pi * t / 24))
        for t in range(25)
    ]
    draw(page, loop)  # a closed loop
    zero = shown_class(page)
    assert zero.split(" ")[0] == "0", zero
    page.screenshot(path=str(tmp_path / "page.png"))

    image = real_test_pngs(real_data_dir, tmp_path, 1)[0]  # the first test image is a 7
    page.locator("#file").set_input_files(str(image))
    shown = shown_class(page, previous=zero)
    assert shown.split(" ")[0] == "7", shown
    page.screenshot(path=str(tmp_path / "page_upload.png"))
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    page.screenshot(path=str(tmp_path / "page_phone.png"), full_page=True)
    print(f"screenshots: {tmp_path}")
