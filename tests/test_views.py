"""The views' pure conversions behind issue 15: safe text, the canvas/table model, results text, library cards."""

import re

import gradio as gr
import pytest
from PIL import Image

from pacgen.app import views
from pacgen.app.train_tab import shown
from pacgen.concepts import Concept
from pacgen.errors import PACGenError
from pacgen.layout import Box
from pacgen.sampling import GenerationResult
from pacgen.training import Estimate, TrainEvent


def test_plain_keeps_angle_brackets_as_text():
    assert views.plain("<my teal circle> has no box & more") == "&lt;my teal circle&gt; has no box &amp; more"
    assert views.banner(["Not loaded: <my dog>"]) == "⚠️ Not loaded: &lt;my dog&gt;"


def result(**settings) -> GenerationResult:
    used = {"model": "tiny", "num_inference_steps": 2, "guidance_scale": 7.5, "regional": True, "width": 64,
            "height": 32, "negative_prompt": "blurry <x>", **settings}
    return GenerationResult([Image.new("RGB", (64, 32))], [7], "a photo of <my dog> on grass", [], {}, used,
                            {"total_s": 1.25, "step_s": 0.04}, ["the prompt is long"])


def test_results_say_prompt_seed_and_settings_in_plain_text():
    text = views.describe(result())
    lines = text.split("  \n")
    assert lines[0] == "a photo of &lt;my dog&gt; on grass"  # shown literally, not swallowed as a tag
    assert lines[1] == "Negative prompt: blurry &lt;x&gt;"
    assert lines[2].startswith("Seeds: 7, Size: 64x32, Steps: 2, Guidance scale: 7.5") and "Model: tiny" in lines[2]
    assert lines[3] == "Time: 1.2 s (40 ms/step)" and lines[4] == "⚠️ the prompt is long"
    redrawn = result(detail_strength=0.7)
    redrawn.timings["detail_s"] = 0.5
    assert "Concept detail pass: 0.7" in views.describe(redrawn)
    assert views.describe(redrawn).split("  \n")[3] == "Time: 1.2 s (40 ms/step; detail pass 0.5 s)"


def test_drawing_order_survives_the_annotators_newest_first_list():
    rows = [["a red star", 0.1, 0.2, 0.5, 0.6], ["a blue circle", 0.5, 0.5, 1.0, 1.0]]
    value = views.annotations_from_rows(rows, 64, 64)
    assert [b["label"] for b in value["boxes"]] == ["a blue circle", "a red star"]  # the annotator's order
    assert [r[0] for r in views.rows_from_annotations(value)] == ["a red star", "a blue circle"]
    assert value["boxes"][-1]["color"] == "rgb(230, 25, 75)"  # box 1 in the overlay's first colour


def test_a_drawn_box_keeps_every_typed_row_and_its_exact_numbers():
    rows = [["a red star", 0.1234, 0.2, 0.5, 0.6], ["a blue circle", None, None, None, None]]
    value = views.annotations_from_rows(rows, 64, 64)
    value["boxes"].insert(0, {"label": "a sun", "xmin": 256, "ymin": 0, "xmax": 512, "ymax": 256, "color": (1, 2, 3)})
    after = views.rows_after_drawing(value, rows)
    assert after == [["a red star", 0.1234, 0.2, 0.5, 0.6], ["a sun", 0.5, 0.0, 1.0, 0.5],
                     ["a blue circle", None, None, None, None]]


def test_a_drawn_box_takes_its_overlay_colour_once_labelled():
    value = views.annotations_from_rows([["a red star", 0.1, 0.1, 0.5, 0.5]], 64, 64)
    value["boxes"] = [{**b, "color": (230, 25, 75)} for b in value["boxes"]]  # as the annotator sends it back
    assert views.recoloured(value) is None
    value["boxes"].insert(0, {"label": "", "xmin": 0, "ymin": 0, "xmax": 9, "ymax": 9, "color": (1, 2, 3)})
    assert views.recoloured(value) is None  # its label dialog is still open
    value["boxes"][0]["label"] = "a sun"
    assert views.recoloured(value)["boxes"][0]["color"] == "rgb(60, 180, 75)"


def test_a_drawn_box_fits_the_narrow_table_and_keeps_every_canvas_pixel():
    for width, height in ((64, 64), (64, 32), (48, 64)):
        side = views.canvas(width, height).size
        for px in range(0, max(side) + 1, 3):
            x, y = min(px, side[0]), min(px, side[1])
            value = {"image": views.canvas(width, height), "boxes": [
                {"label": "a", "xmin": 0, "ymin": 0, "xmax": x, "ymax": y, "color": (1, 2, 3)}]}
            row = views.rows_from_annotations(value)[0]
            assert all(len(f"{v:g}") <= 5 for v in row[1:]), row  # "0.137": no wrap in an 18% column at 800 px
            back = views.annotations_from_rows([row], width, height)["boxes"][0]
            assert (back["xmax"], back["ymax"]) == (x, y)  # the same pixel the box was drawn at


@pytest.mark.parametrize(
    "row, previous, want, message",
    [(["a", 0.1, 0.1, 1.7, 0.5], [], ["a", 0.1, 0.1, 1.0, 0.5], "box 1: x1 = 1.7 is outside [0, 1]; set to 1"),
     (["a", 0.97, 0.1, 0.95, 0.5], [["a", 0.55, 0.1, 0.95, 0.5]], ["a", 0.55, 0.1, 0.95, 0.5],
      "box 1: x0 must be smaller than x1; kept 0.55 and 0.95"),
     (["a", 0.1, 0.9, 0.5, 0.2], [], ["a", 0.1, 0.2, 0.5, 0.9], "box 1: y0 must be smaller than y1; swapped them")],
)
def test_table_values_are_checked_as_they_are_typed(row, previous, want, message):
    rows, messages = views.check_rows([row], previous)
    assert rows == [want] and messages == [message]


def test_training_with_nothing_filled_names_every_missing_field():
    with pytest.raises(PACGenError, match="fill in 3–5 photos, a concept name, a class noun"):
        views.missing_fields([], " ", "")
    views.missing_fields(["a.png"], "my dog", "dog")


def test_library_cards_show_full_names_or_say_what_to_do(tmp_path):
    assert "Train one in <b>1 · Train</b>" in views.cards([], [])
    Image.new("RGB", (8, 8)).save(tmp_path / "thumbnail.png")
    concept = Concept("<odd> name", "sks", "dog", "tiny", "f", path=tmp_path)
    html = views.cards([concept], [("<odd> name", "trained on another base model, sd"), ("junk", "no concept.json")])
    assert "<b>&lt;odd&gt; name</b>" in html and "data:image/png;base64," in html
    assert "not usable: trained on another base model" in html and "<li>junk: no concept.json</li>" in html


def test_library_cards_are_buttons_that_carry_their_name_and_mark_the_chosen_one(tmp_path):
    concepts = [Concept(name, "sks", "dog", "tiny", "f", path=tmp_path) for name in ('my "odd" <dog>', "cat")]
    html = views.cards(concepts, [], chosen="cat")
    first, second = html.split("</figure>")[:2]
    assert 'role="button" tabindex="0"' in first and 'data-concept="my &quot;odd&quot; &lt;dog&gt;"' in first
    assert 'aria-pressed="false"' in first and 'class="concept-card"' in first
    assert 'aria-pressed="true"' in second and 'class="concept-card chosen"' in second


def test_estimate_says_how_long_in_a_users_words_with_the_figures_one_click_away():
    basis = "measured here at 32 px: 0.16 s per training step, 84 ms per sampling step; 72 images to encode"
    estimate = Estimate(95.0, {"class images": 20.0, "training steps": 75.0, "previews": 0.0}, basis)
    headline, folded = views.estimate(estimate, 400, 3).split("\n\n")
    assert headline == "Training takes about **2 min**."
    assert folded == ("<details><summary>How this is estimated</summary>400 steps, 3 photos: class images 20 s, "
                      "training steps 75 s. Speeds measured here at 32 px: 0.16 s per training step, 84 ms per "
                      "sampling step; 72 images to encode.</details>")


def test_header_says_model_concepts_and_picture_size_with_the_technical_figures_one_click_away():
    status = {"device": "CPU", "model": "mini", "dtype": "float32", "memory": "0.7 GiB RAM", "concepts": 1, "size": 64}
    headline, folded = views.header(status).split("\n\n")
    assert headline == "Model **mini** on the CPU · **1 concept** ready to use · pictures of 64×64 px"
    assert folded == "<details><summary>Details</summary>Device CPU · dtype float32 · memory 0.7 GiB RAM</details>"
    gpu = views.header({**status, "device": "NVIDIA H100", "concepts": 0})
    assert gpu.startswith("Model **mini** on the GPU (NVIDIA H100) · **0 concepts** ready")
    assert views.header({**status, "replicas": 2}).startswith("Model **mini** on the CPU (2 pipelines) · ")
    two = views.header({**status, "device": "NVIDIA H100", "replicas": 2})
    assert two.startswith("Model **mini** on 2 devices (NVIDIA H100) · ")


def test_loss_plot_follows_the_smoothed_loss_and_success_points_to_compose():
    shown = views.TrainView()
    shown.add(TrainEvent("training", 1, 2, loss=0.9, loss_smoothed=0.5))
    assert shown.losses == [(1, 0.5)]
    assert views.TrainView().loss_html() == "" and "from 0.5000 at step 1 to 0.5000 at step 1" in shown.loss_html()
    assert line_points(shown.loss_html()) == ["0.00,0.00"] * 2  # one point is a dot, not nothing
    concept = Concept("my dog", "sks", "dog", "tiny", "f")
    shown.add(TrainEvent("done", 2, 2, message="saved 'my dog' (sks dog)", concept=concept))
    assert shown.markdown().startswith("saved 'my dog' (sks dog)  \n**Next: 2 · Compose.**")
    assert "&lt;my dog&gt;" in shown.markdown()


def line_points(html: str) -> list[str]:
    """The loss curve's points, as its SVG line has them (x, y in its box, y downwards)."""
    return re.search(r'<polyline points="([^"]+)"', html).group(1).split()


def test_placeholder_uses_the_models_own_words():
    example = views.Example("a red star on grass", (Box("a red star", (0, 0, 1, 1)),))
    assert views.placeholder([example]) == "e.g. a red star on grass"


def test_plain_steps_update_the_train_tab_at_most_so_often_but_every_loss_reaches_the_plot():
    steps = [TrainEvent("training", k, 50, loss=1.0 / k, loss_smoothed=1.0 / k) for k in range(1, 51)]
    preview = TrainEvent("training", 25, 50, loss=0.04, loss_smoothed=0.04, preview=Image.new("RGB", (8, 8)))
    events = steps[:25] + [preview] + steps[25:] + [TrainEvent("done", 50, 50, message="saved")]
    updates = list(shown(iter(events), every_s=3600))
    assert [view.progress for view, _ in updates][-1] == 1.0
    assert len(updates) == 3  # the first step, the preview and the end; no plain step in between
    _, (_, plot, previews, _) = updates[-1]
    assert "at step 1 to 0.0200 at step 50" in plot and len(previews) == 1
    points = line_points(plot)  # every loss, the first and highest top left, the last and lowest bottom right
    assert len(points) == 51 and points[0] == "0.00,0.00" and points[-1] == "100.00,100.00"
    assert all(f">{text}<" in plot for text in ("1.0000", "0.0200", "step 1", "step 50"))  # its scale, as text
    assert updates[0][1][2] == gr.skip()  # a plain step leaves the previews as they are
    _, (_, plot, _, _) = next(shown(iter([TrainEvent("class-images", 1, 2)])))
    assert plot == ""  # no loss yet, no curve
