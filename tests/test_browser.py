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


def serve(studio: Studio):
    """The app for this studio, launched on a free local port without blocking; close it when done."""
    demo = app.build_ui(studio)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo.queue(default_concurrency_limit=1).launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                                                   quiet=True, css=app.CSS, **app.launch_options(studio.policy, []))
    return demo


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    demo = serve(Studio("tiny", tmp_path_factory.mktemp("home"), device="cpu"))
    yield demo.local_url
    demo.close()


def draw_box(page, label, start, size):
    """Drag a box on the canvas, from `start` (pixels from the canvas's top centre) by `size`, and label it."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect

    canvas = page.locator("#canvas canvas").first
    expect(canvas).to_be_visible()
    dialog = page.get_by_role("listbox", name="Label")
    for attempt in range(3):  # on a loaded machine the canvas can take a drag before it listens: drag again
        area, still = canvas.bounding_box(), 0
        for _ in range(50):  # a tab just opened may still be laying out: drag where the canvas has come to rest
            page.wait_for_timeout(100)
            area, before = canvas.bounding_box(), area
            still = still + 1 if area == before else 0
            if still == 3:
                break
        x, y = area["x"] + area["width"] / 2 + start[0], area["y"] + start[1]
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + size[0], y + size[1], steps=10)
        page.mouse.up()
        try:
            dialog.wait_for(state="visible", timeout=10_000)
            break
        except PlaywrightTimeout:
            if attempt == 2:
                raise
    dialog.fill(label)
    dialog.press("Enter")  # confirms the label and closes the dialog
    expect(page.locator("#boxes")).to_contain_text(label, timeout=10_000)


def test_draw_label_generate_in_the_browser(url):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url, wait_until="load")
        expect(page.get_by_text("Put your own objects")).to_be_visible(timeout=30_000)
        expect(page.get_by_text("Running on CPU")).to_be_visible()
        expect(page.locator("#header")).to_contain_text("Model tiny on the CPU · 0 concepts ready to use")
        page.screenshot(path=ARTIFACTS / "train.png", full_page=True)

        page.get_by_role("tab", name="Compose").click()
        draw_box(page, "a red star", (-150, 80), (160, 200))

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


def test_generate_into_a_scene_photo_in_the_browser(url, tmp_path):
    from playwright.sync_api import expect, sync_playwright
    from PIL import Image

    photo = tmp_path / "my room.png"
    Image.radial_gradient("L").convert("RGB").resize((128, 96)).save(photo)  # not square: the canvas shows the crop
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url, wait_until="load")
        page.get_by_role("tab", name="Compose").click()
        page.locator("#scene input[type=file]").set_input_files(str(photo))
        expect(page.locator("#scene img").first).to_be_visible(timeout=30_000)
        page.wait_for_timeout(1500)  # the canvas takes the photo as its background
        draw_box(page, "a red ball", (-100, 100), (140, 140))
        page.locator("#prompt textarea").fill("a red ball in my room")
        page.get_by_role("button", name="Generate").click()
        expect(page.locator("#results img").first).to_be_visible(timeout=60_000)
        expect(page.locator("#result-info")).to_contain_text("Scene photo: kept outside the boxes")
        page.screenshot(path=ARTIFACTS / "scene.png", full_page=True)
        browser.close()


def test_the_notices_are_readable_in_the_dark_theme(url):
    """The banner (running on the CPU, the test model) had a fixed light background under the dark theme's light
    text: unreadable. Its text must stand out from its background in both themes (WCAG's 4.5:1 for text)."""
    from playwright.sync_api import expect, sync_playwright

    contrast = """el => {
        const rgb = c => c.match(/[\\d.]+/g).slice(0, 3).map(Number);
        const lum = c => { const [r, g, b] = rgb(c).map(v => { v /= 255;
            return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
            return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
        const text = getComputedStyle(el.querySelector('p') || el).color;
        const back = getComputedStyle(el).backgroundColor;
        const [a, b] = [lum(text), lum(back)].sort((x, y) => y - x);
        return (a + 0.05) / (b + 0.05);
    }"""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1000, "height": 700})
        for theme in ("light", "dark"):
            page.goto(f"{url}?__theme={theme}", wait_until="load")
            banner = page.locator("#banner")
            expect(banner).to_contain_text("Running on CPU", timeout=30_000)
            assert banner.evaluate(contrast) >= 4.5, theme
            page.screenshot(path=ARTIFACTS / f"banner-{theme}.png")
        browser.close()
