"""Issue 15 as a newcomer meets it, in headless Chromium on `tiny`: one page, driven as a user drives it (click,
type, drag on the canvas), one test per problem, screenshots in artifacts/browser/newcomer-*.png.

The tests share one server and one page and run in file order: the Library is emptied near the end, and the last
test trains a concept.
"""

import re
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from test_browser import ARGS, ARTIFACTS, CHROMIUM, pytestmark, serve  # noqa: F401  (pytestmark: slow, needs chromium)

from pacgen.app import views
from pacgen.app.session import Studio
from pacgen.mini.stand_ins import write_random_concept

ROOT = Path(__file__).resolve().parent.parent
CONCEPTS = ["alpha one", "beta two", "my teal circle"]  # the last is the newest: Compose's first example uses it


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    studio = Studio("tiny", tmp_path_factory.mktemp("home"), device="cpu")
    comp = studio.pipe.components
    # tiny with the kit's example objects, and a training short enough for a browser test.
    comp.defaults = replace(comp.defaults, concept_examples=ROOT / "assets" / "concepts",
                            training=replace(comp.defaults.training, steps=20, num_class_images=2, preview_every=10))
    start = datetime.now(timezone.utc) - timedelta(hours=1)
    for k, name in enumerate(CONCEPTS):
        concept = write_random_concept(studio.pipe, studio.library.concepts_dir / name.replace(" ", "-"), name,
                                       f"sk{k}", "circle", seed=k)
        concept.created = (start + timedelta(minutes=k)).isoformat(timespec="seconds")
        (concept.path / "concept.json").write_text(concept.to_json())
    studio.sync_library()
    return studio


@pytest.fixture(scope="module")
def page(studio):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    demo = serve(studio)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("pageerror", lambda error: FAULTS.append(f"uncaught {error}"))
        page.on("console", lambda message: FAULTS.append(message.text) if (
            "Uncaught" in message.text or "Infinite extent" in message.text) else None)
        page.goto(demo.local_url, wait_until="load")
        expect(page.get_by_text("Put your own objects")).to_be_visible(timeout=30_000)
        yield page
        browser.close()
    demo.close()


# Issue 24/15: every uncaught error on the page, and Vega's "Infinite extent" warnings, in the walkthrough so far.
FAULTS: list[str] = []


@pytest.fixture(autouse=True)
def clean_console(page):
    """No step of the walkthrough leaves an uncaught error or a Vega warning on the page: trainings that follow one
    another (the next one starting while the last one's loss curve is shown, its tab hidden or not), reloads during
    and after them, resizes (once "reading 'step'" after each reload, "reading 'offsetWidth' of null" and 124
    "Infinite extent" warnings from the loss plot)."""
    FAULTS.clear()
    yield
    assert not FAULTS, FAULTS


def shot(page, name):
    page.screenshot(path=ARTIFACTS / f"newcomer-{name}.png", full_page=True)


def tab(page, name):
    page.get_by_role("tab", name=name).click()


def set_setting(page, name, value):
    from playwright.sync_api import expect

    field = page.locator(f"#setting-{name} input[type=number]")
    if not field.is_visible():  # in the open tab's closed "Advanced settings"
        page.locator("text=Advanced settings >> visible=true").click()
        expect(field).to_be_visible(timeout=10_000)  # the accordion opens with an animation
    field.fill(str(value))
    field.press("Enter")


def toast(page):
    return page.get_by_test_id("toast-body").last


def close_toasts(page):
    for close in page.get_by_test_id("toast-close").all():
        close.click()


def table_rows(page) -> list[list[str]]:
    """The box table as the user reads it: one list of cell texts per row."""
    return page.evaluate("""() => [...document.querySelectorAll('#boxes [role=row].virtual-row')].map(
        row => [...row.querySelectorAll('[role=gridcell]')].map(cell => cell.innerText.trim()))""")


def edit_cell(page, row, column, value):
    cell = page.locator(f'#boxes [data-testid="cell-{row}-{column}"]')
    page.wait_for_timeout(500)  # the table settles after the previous edit's round trip
    cell.dblclick()
    editor = cell.locator("input, textarea").first
    editor.fill(str(value))
    editor.press("Enter")
    page.mouse.click(5, 5)  # leave the table, as a user clicking elsewhere does


def drag_box(page, label, start, end, offered=False):
    """Drag a box on the canvas from `start` to `end` (fractions of the canvas) and label it (checking, if
    `offered`, that the label is one the dialog offers)."""
    from playwright.sync_api import expect

    area = page.locator("#canvas canvas").first.bounding_box()
    at = lambda fx, fy: (area["x"] + fx * area["width"], area["y"] + fy * area["height"])  # noqa: E731
    page.mouse.move(*at(*start))
    page.mouse.down()
    page.mouse.move(*at(*end), steps=8)
    page.mouse.up()
    box = page.get_by_role("listbox", name="Label")
    box.fill(label)
    if offered:
        expect(page.get_by_role("option").filter(has_text=label)).to_be_visible()
    box.press("Enter")


def in_view(locator) -> bool:
    """Whether the element is wholly inside the window, as it stands (no scrolling)."""
    return locator.evaluate("e => {const r = e.getBoundingClientRect(); "
                            "return r.top >= 0 && r.bottom <= innerHeight && r.left >= 0 && r.right <= innerWidth}")


def test_0_a_newcomer_sees_where_to_start_in_their_own_words(page):
    from playwright.sync_api import expect

    train = page.get_by_role("button", name="Train", exact=True)
    examples = page.locator(".example-objects button")
    expect(examples).to_have_count(6)
    for width in (1400, 800):  # without photos: the example objects and Train, without scrolling
        page.set_viewport_size({"width": width, "height": 1000})
        page.wait_for_timeout(500)
        assert in_view(train), width
        assert all(in_view(button) for button in examples.all()), width
        shot(page, f"0-train-{width}")
    page.set_viewport_size({"width": 1400, "height": 1000})
    header = page.locator("#header")
    expect(header).to_contain_text("Model tiny on the CPU · 3 concepts ready to use · pictures of 64×64 px",
                                   use_inner_text=True)
    expect(header).not_to_contain_text("dtype", use_inner_text=True)  # the technical figures: one click away
    header.get_by_text("Details").click()
    expect(header).to_contain_text("dtype float32 · memory", use_inner_text=True)
    estimate = page.locator("#train-estimate")
    expect(estimate).to_have_text("")  # no photos, no estimate
    page.get_by_role("button", name="ruby checker star (star)").click()
    expect(estimate).to_contain_text("Training takes about", timeout=120_000, use_inner_text=True)
    expect(estimate).not_to_contain_text("per sampling step", use_inner_text=True)
    assert in_view(train)  # the chosen photos shown above it do not push it out of view
    estimate.get_by_text("How this is estimated").click()
    expect(estimate).to_contain_text("per sampling step", use_inner_text=True)
    shot(page, "0-example-chosen")
    page.reload(wait_until="load")  # the next tests start from an empty form
    expect(page.get_by_text("Put your own objects")).to_be_visible(timeout=30_000)


def test_1_results_show_whole_images_with_prompt_seed_and_settings(page):
    from playwright.sync_api import expect

    tab(page, "Compose")
    page.get_by_role("button", name="a photo of <my teal circle> on grass").click()
    expect(page.locator("#prompt textarea")).to_have_value("a photo of <my teal circle> on grass")
    set_setting(page, "num_inference_steps", 2)
    set_setting(page, "height", 32)
    set_setting(page, "seed", 7)
    page.get_by_role("button", name="Generate").click()
    image = page.locator("#results img").first
    expect(image).to_be_visible(timeout=60_000)
    info = page.locator("#result-info")
    expect(info).to_contain_text("a photo of <my teal circle> on grass", timeout=10_000)
    for words in ("Seeds: 7", "Size: 64x32", "Guidance", "Time:"):
        expect(info).to_contain_text(words)
    page.wait_for_timeout(500)
    fit = image.evaluate("""img => {const r = img.getBoundingClientRect(), s = getComputedStyle(img);
        return {fit: s.objectFit, w: r.width, h: r.height, nw: img.naturalWidth, nh: img.naturalHeight}}""")
    assert (fit["nw"], fit["nh"]) == (64, 32)
    # The whole image is in view: contained in its box (not filled and cropped), or drawn at its own aspect.
    assert fit["fit"] == "contain" or abs(fit["w"] / fit["h"] - 2) < 0.05, fit
    shot(page, "1-results")


def test_2_text_with_angle_brackets_shows_literally_and_an_error_keeps_the_results(page):
    from playwright.sync_api import expect

    page.get_by_role("button", name="a red star and a blue circle on grass").click()
    expect(page.locator("#prompt textarea")).to_have_value("a red star and a blue circle on grass")
    page.locator("#prompt textarea").fill("<my teal circle> on grass")
    page.get_by_role("button", name="Generate").click()
    expect(toast(page)).to_contain_text("<my teal circle> has no box", timeout=30_000)
    expect(page.locator("#results img").first).to_be_visible()  # the previous results stay
    expect(page.locator("#result-info")).to_contain_text("Size: 64x32")
    shot(page, "2-error")
    close_toasts(page)


def test_6_canvas_and_table_are_one_model(page):
    from playwright.sync_api import expect

    page.get_by_role("button", name="a red star and a blue circle on grass").click()
    expect(page.locator("#boxes")).to_contain_text("a blue circle")
    edit_cell(page, 0, 3, 1.7)  # x1 of the red star
    expect(page.locator("#box-message")).to_contain_text("x1 = 1.7 is outside [0, 1]; set to 1")
    edit_cell(page, 1, 1, 0.97)  # x0 of the blue circle, past its x1 = 0.95
    expect(page.locator("#box-message")).to_contain_text("x0 must be smaller than x1; kept 0.55 and 0.95")
    drag_box(page, "a green triangle", (0.1, 0.6), (0.4, 0.95))
    expect(page.locator("#boxes")).to_contain_text("a green triangle", timeout=10_000)
    page.wait_for_timeout(800)
    rows = table_rows(page)
    assert [r[0] for r in rows] == ["a red star", "a blue circle", "a green triangle"]  # drawing order
    assert rows[0][3] == "1" and rows[1][1] == "0.55"  # the edits survived the new box
    shot(page, "6-canvas-table")


def test_24_7_11_12_canvas_table_and_prompt_are_whole_at_1400_and_800_px(page):
    """Issue 24: no rotate buttons (they moved boxes on the canvas only), no label over the drawing area, and at
    800 px every column of the box table and several lines of the prompt in view."""
    from playwright.sync_api import expect

    for rotate in page.locator('#canvas button[aria-label^="Rotate"]').all():
        expect(rotate).to_be_hidden()
    for width in (1400, 800):
        page.set_viewport_size({"width": width, "height": 1000})
        page.wait_for_timeout(800)
        label = page.locator("#canvas [data-testid=block-label]").bounding_box()
        drawing = page.locator("#canvas canvas").first.bounding_box()
        assert label["y"] + label["height"] <= drawing["y"] + 1, (label, drawing)  # above the drawing, not on it
        table = page.evaluate("""() => {
            const box = document.querySelector('#boxes').getBoundingClientRect();
            const view = document.querySelector('#boxes .virtual-table-viewport');
            const cells = [...document.querySelectorAll('#boxes [role=columnheader], #boxes [role=gridcell]')];
            return {scrolls: view.scrollWidth > view.clientWidth + 1,
                    cut: cells.filter(c => c.getBoundingClientRect().right > box.right + 1).map(c => c.innerText),
                    wrapped: cells.filter(c => c.dataset.col !== '0' && c.querySelector('span') &&
                                          c.querySelector('span').getClientRects().length > 1).map(c => c.innerText)};
        }""")
        assert table == {"scrolls": False, "cut": [], "wrapped": []}, (width, table)
        lines = page.locator("#prompt textarea").evaluate(
            "t => t.clientHeight / parseFloat(getComputedStyle(t).lineHeight)")
        assert lines >= 2.5, (width, lines)
        shot(page, f"24-compose-{width}")
    page.set_viewport_size({"width": 1400, "height": 1000})


def test_7_names_are_visible_at_800_px(page):
    from playwright.sync_api import expect

    page.set_viewport_size({"width": 800, "height": 1000})
    tab(page, "Train")
    for name in ("candy band diamond (diamond)", "violet split triangle (triangle)"):
        button = page.get_by_role("button", name=name)
        expect(button).to_be_visible()
        assert button.evaluate("b => b.scrollWidth <= b.clientWidth + 1")  # the full name, not cut off
        assert button.locator("img").evaluate("img => img.complete && img.naturalWidth > 0")  # a thumbnail
    shot(page, "7-train-800")
    tab(page, "Library")
    cards = page.locator(".concept-card")
    expect(cards).to_have_count(len(CONCEPTS))
    for name in CONCEPTS:
        expect(cards.filter(has_text=name)).to_be_visible()
    assert cards.first.bounding_box()["width"] < 200  # small cards, not page-wide thumbnails
    shot(page, "7-library-800")
    page.set_viewport_size({"width": 1400, "height": 1000})


def test_5_delete_asks_again_for_every_concept_and_an_empty_library_says_what_to_do(page, studio, tmp_path):
    """Issue 24 item 9 too: a click on a card chooses it, and the one message shows the latest outcome only."""
    from playwright.sync_api import expect

    saved = tmp_path / "alpha one.zip"
    saved.write_bytes(studio.export("alpha one").read_bytes())  # to import it back below
    tab(page, "Library")
    confirm = page.get_by_label("Yes, delete it (cannot be undone)")
    message = page.locator("#library-status [data-testid=markdown]")

    def choose(name):
        # A click that lands while the page's own load-time refresh is still on its way is undone by it (seen only
        # on a loaded machine, right after the page opened): click again then, as a person would.
        for attempt in range(3):
            page.locator(".concept-card").filter(has_text=name).click()
            try:
                expect(page.locator(".concept-card.chosen")).to_contain_text(name, timeout=10_000)
                expect(page.locator("#library-concept input")).to_have_value(name, timeout=10_000)
                return
            except AssertionError:
                if attempt == 2:
                    raise

    choose("alpha one")
    confirm.check()
    page.get_by_role("button", name="Delete", exact=True).click()
    expect(message).to_have_text("Deleted 'alpha one'.", timeout=10_000)
    expect(confirm).not_to_be_checked()
    expect(page.locator(".concept-card.chosen")).to_have_count(0)
    choose("beta two")
    page.get_by_role("button", name="Delete", exact=True).click()
    expect(toast(page)).to_contain_text("tick 'confirm'", timeout=10_000)
    expect(message).to_have_text("")  # not the earlier "Deleted" beside a card still there
    expect(page.locator(".concept-card").filter(has_text="beta two")).to_be_visible()
    page.locator("#library-import input[type=file]").set_input_files(str(saved))
    page.get_by_role("button", name="Import", exact=True).click()
    expect(message).to_have_text("Imported 'alpha one' (sk0 circle).", timeout=30_000)
    expect(page.get_by_test_id("toast-body")).to_have_count(0)  # the refused delete's error went with it
    shot(page, "24-library-one-message")
    page.get_by_role("button", name="Import LoRA").scroll_into_view_if_needed()
    expect(message).to_be_in_viewport()  # the one message stays in view beside the last action, far down the tab
    page.evaluate("window.scrollTo(0, 0)")
    for name in ("beta two", "my teal circle", "alpha one"):
        choose(name)
        expect(confirm).not_to_be_checked()
        confirm.check()
        page.get_by_role("button", name="Delete", exact=True).click()
        expect(message).to_have_text(f"Deleted '{name}'.", timeout=10_000)
    expect(page.locator("#library-cards")).to_contain_text("No concepts yet", timeout=10_000)
    expect(page.locator("#library-cards")).to_contain_text("import a concept zip")
    shot(page, "5-library-empty")


def test_8_the_path_guides_a_newcomer_from_training_to_compose(page, studio):
    from playwright.sync_api import expect

    for step in views.STEPS:
        expect(page.get_by_role("tab", name=step)).to_be_visible()
    expect(page.locator("#prompt textarea")).to_have_attribute("placeholder",
                                                               views.placeholder(list(studio.defaults.examples)))
    tab(page, "Train")
    cancel = page.get_by_role("button", name="Cancel")
    expect(cancel).to_be_disabled()
    train = page.get_by_role("button", name="Train", exact=True)
    train.click()
    expect(toast(page)).to_contain_text("fill in 3–5 photos, a concept name, a class noun", timeout=10_000)
    expect(cancel).to_be_disabled(timeout=10_000)  # refused: nothing to cancel
    close_toasts(page)
    page.get_by_role("button", name="ruby checker star (star)").click()
    expect(page.get_by_label("Concept name").first).to_have_value("ruby checker star")  # the Train tab's
    train.click()
    expect(cancel).to_be_enabled(timeout=5_000)
    status = page.locator("#train-status")
    expect(status).to_contain_text("saved 'ruby checker star'", timeout=600_000)
    expect(status).to_contain_text("Next: 2 · Compose")
    below = status.bounding_box()["y"] - train.bounding_box()["y"]
    assert 0 < below < 150  # the message sits under the button that caused it
    expect(cancel).to_be_disabled(timeout=10_000)
    preview = page.locator("#previews img").first
    expect(preview).to_be_visible()
    size = preview.evaluate("img => [getComputedStyle(img).objectFit, img.getBoundingClientRect().width, "
                            "img.naturalWidth]")
    assert size[0] == "none" or abs(size[1] - size[2]) <= 1, size  # at its own pixels, not rescaled by the gallery
    curve = page.locator(".loss-plot svg")  # the loss curve, to the last step
    expect(curve).to_have_attribute("aria-label", re.compile(r"at step 20$"))
    shot(page, "8-trained")
    page.get_by_role("button", name="Use 'ruby checker star' in Compose").click()
    expect(page.locator("#prompt textarea")).to_have_value("a photo of <ruby checker star> on grass")
    expect(page.locator("#boxes")).to_contain_text("<ruby checker star>")
    # Among Compose's examples now, not after a restart.
    expect(page.get_by_role("button", name="a photo of <ruby checker star> on grass")).to_be_visible()
    shot(page, "8-use-in-compose")


def start_training(page, name, steps):
    """Pick an example object, name the concept, set its steps (on a page whose Train settings are folded) and
    press Train."""
    from playwright.sync_api import expect

    field = page.get_by_label("Concept name").first
    field.fill("")
    page.get_by_role("button", name="ruby checker star (star)").click()
    expect(field).to_have_value("ruby checker star")  # the example's fill has come, so ours replaces it
    field.fill(name)
    set_setting(page, "steps", steps)
    page.get_by_role("button", name="Train", exact=True).click()


def reload(page):
    from playwright.sync_api import expect

    page.reload(wait_until="load")
    expect(page.get_by_text("Put your own objects")).to_be_visible(timeout=30_000)


def test_4_a_training_survives_a_reload_and_the_page_ends_as_if_it_never_reloaded(page, studio):
    from playwright.sync_api import expect

    # Its console is checked by clean_console: a second and third training, four reloads and two widths.
    tab(page, "Train")
    start_training(page, "kept running", 3000)
    status = page.locator("#train-status")
    expect(status).to_contain_text("Training step", timeout=600_000)
    reload(page)  # the tab closes and comes back mid-training
    assert studio.training_active()
    expect(status).to_contain_text("Training step", timeout=30_000)
    shot(page, "4-reattached")
    cancel = page.get_by_role("button", name="Cancel")
    expect(cancel).to_be_enabled(timeout=10_000)
    cancel.click()
    expect(status).to_contain_text("cancelled", timeout=30_000)
    expect(cancel).to_be_disabled(timeout=10_000)
    assert "kept running" not in studio.concept_names()

    # Reloaded during a training that then ends: the page shows the library as it is after it, as the page that
    # started the training would. The test holds the model until the page is back, so the training ends after the
    # reload however fast this machine is.
    reload(page)
    with studio.replicas.take():
        start_training(page, "after reload", 20)
        deadline = time.monotonic() + 60
        while not studio.training_active() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert studio.training_active()
        reload(page)
        expect(page.get_by_role("button", name="Cancel")).to_be_enabled(timeout=30_000)  # followed again
    expect(status).to_contain_text("saved 'after reload'", timeout=600_000)
    count = len(studio.concept_names())
    expect(page.locator("#header")).to_contain_text(f"{count} concepts ready to use", timeout=10_000)
    expect(page.get_by_role("button", name="Use 'after reload' in Compose")).to_be_visible()
    expect(cancel).to_be_disabled()
    shot(page, "4-saved-after-reload")
    tab(page, "Compose")
    page.get_by_role("button", name="a photo of <after reload> on grass").click()
    expect(page.locator("#prompt textarea")).to_have_value("a photo of <after reload> on grass")
    drag_box(page, "<after reload>", (0.05, 0.05), (0.3, 0.3), offered=True)
    shot(page, "4-compose-after-reload")
    reload(page)  # a page opened after the training shows it again
    expect(page.locator("#train-status")).to_contain_text("saved 'after reload'", timeout=30_000)
    for width in (800, 1400):  # and is redrawn at another width
        page.set_viewport_size({"width": width, "height": 1000})
        page.wait_for_timeout(1000)


def test_24_6_generate_shows_that_it_waits_behind_a_training_then_its_steps(page, studio):
    from playwright.sync_api import expect

    tab(page, "Train")
    name = page.get_by_label("Concept name").first
    page.get_by_role("button", name="ruby checker star (star)").click()
    expect(name).to_have_value("ruby checker star")
    name.fill("long training")
    set_setting(page, "steps", 3000)
    page.get_by_role("button", name="Train", exact=True).click()
    cancel = page.get_by_role("button", name="Cancel")
    expect(cancel).to_be_enabled(timeout=30_000)  # the training holds the model from here on
    tab(page, "Compose")
    page.get_by_role("button", name="a red star and a blue circle on grass").click()
    set_setting(page, "num_inference_steps", 100)  # long enough on tiny to watch its steps go by (20 were not)
    page.get_by_role("button", name="Generate").click()
    status = page.locator("#generate-status")
    expect(status).to_contain_text("waiting for a training to finish", timeout=30_000)
    assert status.bounding_box()["height"] > 20  # in view under the button, not a 0-px area
    shot(page, "24-generate-waiting")
    tab(page, "Train")
    cancel.click()
    expect(page.locator("#train-status")).to_contain_text("cancelled", timeout=60_000)
    tab(page, "Compose")
    expect(status).to_contain_text("denoising", timeout=120_000)  # the steps, as they run
    expect(page.locator("#result-info")).to_contain_text("Steps: 100", timeout=180_000)
    assert "long training" not in studio.concept_names()


def test_9_the_train_tab_shows_what_the_first_example_gives(page):
    """Under the example objects, the first example's photos beside images composed with it at the defaults
    (`python -m pacgen.mini.bench.first_example`): what a newcomer can expect before training anything."""
    from playwright.sync_api import expect

    tab(page, "Train")
    picture = page.locator("#example-composed img")
    expect(picture).to_be_visible(timeout=10_000)
    page.wait_for_function("() => document.querySelector('#example-composed img').naturalWidth > 600")
    assert "ruby checker star" in picture.get_attribute("alt")
    shot(page, "9-first-example")
