"""A user in headless Chromium: switch tabs, draw and label a box, generate, and keep screenshots.

Needs Debian's chromium (`apt-get install -y chromium`); screenshots go to artifacts/browser/ (git-ignored).
"""

import os
import socket
from pathlib import Path

import pytest

import app
from pacgen.app.session import Studio

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts" / "browser"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium")]


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    studio = Studio("tiny", tmp_path_factory.mktemp("home"), device="cpu")
    demo = app.build_ui(studio)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo.queue(default_concurrency_limit=1).launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                                                   quiet=True, css=app.CSS)
    yield demo.local_url
    demo.close()


def test_draw_label_generate_in_the_browser(url):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url, wait_until="load")
        expect(page.get_by_text("Put your own objects")).to_be_visible(timeout=30_000)
        expect(page.get_by_text("Running on CPU")).to_be_visible()
        page.screenshot(path=ARTIFACTS / "train.png", full_page=True)

        page.get_by_role("tab", name="Compose").click()
        canvas = page.locator("#canvas canvas").first
        expect(canvas).to_be_visible()
        area = canvas.bounding_box()
        x, y = area["x"] + area["width"] / 2 - 150, area["y"] + 80
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + 160, y + 200, steps=10)
        page.mouse.up()
        label = page.get_by_role("listbox", name="Label")
        label.fill("a red star")
        label.press("Enter")  # confirms the label and closes the dialog
        expect(page.locator("#boxes")).to_contain_text("a red star", timeout=10_000)

        page.locator("#prompt textarea").fill("a red star on grass")
        page.get_by_role("button", name="Generate").click()
        result = page.locator("#results img").first
        expect(result).to_be_visible(timeout=60_000)
        page.get_by_text("Overlay boxes and labels").click()
        expect(page.get_by_text("seed").first).to_be_visible()
        page.screenshot(path=ARTIFACTS / "compose.png", full_page=True)

        page.get_by_role("tab", name="Library").click()
        expect(page.get_by_role("button", name="Download as zip")).to_be_visible()
        page.screenshot(path=ARTIFACTS / "library.png", full_page=True)
        browser.close()
