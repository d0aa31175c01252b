"""The app layer without a server: the session object's actions and the views' conversions."""

import numpy as np
import pytest
from PIL import Image

from pacgen.app import replicas as replicas_module
from pacgen.app import session as session_module
from pacgen.app import compose_tab, train_tab, views
from pacgen.app.session import Studio, resolve_model
from pacgen.errors import PACGenError
from pacgen.layout import Box
from pacgen.settings import TrainSettings


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    return Studio("tiny", tmp_path_factory.mktemp("home"), device="cpu")


def test_canvas_and_table_round_trip():
    rows = [["a red star", 0.1, 0.2, 0.5, 0.6], ["a blue circle", 0.5, 0.5, 1.0, 1.0]]
    value = views.annotations_from_boxes(views.boxes_from_rows(rows, []), 64, 32)
    assert value["image"].size == (512, 256)
    assert value["boxes"][0]["color"].startswith("rgb(")
    back = views.rows_from_annotations(value)
    for got, want in zip(back, rows):
        # half a canvas pixel (256 px here) and the table's three decimals
        assert got[0] == want[0] and got[1:] == pytest.approx(want[1:], abs=0.5 / 256 + 5e-4)


def test_rows_name_concepts_with_or_without_brackets():
    boxes = views.boxes_from_rows([["my dog", 0, 0, 0.5, 0.5], ["<my dog>", 0.5, 0.5, 1, 1], ["a ball", 0, 0.5, 0.5, 1],
                                   ["", "", "", "", ""]], ["my dog"])
    assert [b.label for b in boxes] == ["<my dog>", "<my dog>", "a ball"]


@pytest.mark.parametrize(
    "rows, message",
    [([["", 0, 0, 1, 1]], "box 1 has no label"), ([["ball", 0, "left", 1, 1]], "must be numbers"),
     ([["ball", 0, 0, 1]], "expected 5 columns")],
)
def test_bad_rows_are_named(rows, message):
    with pytest.raises(PACGenError, match=message):
        views.boxes_from_rows(rows, [])


def test_auto_falls_back_to_an_embedded_model_with_a_notice(monkeypatch, tmp_path):
    monkeypatch.setattr(session_module.torch.cuda, "is_available", lambda: False)
    assert resolve_model("auto")[0] == "mini"
    monkeypatch.setattr(session_module, "MINI_DIR", tmp_path / "missing")
    source, notice = resolve_model("auto")
    assert source == "tiny" and "No GPU found" in notice and "random weights" in notice
    assert resolve_model("tiny") == ("tiny", "")


def test_overlay_enlarges_and_draws_the_boxes_in_their_own_colours(studio):
    box = Box("a ball", (0.25, 0.25, 0.75, 0.75))
    result = studio.generate("a ball", "", [box], studio.pipe.settings(num_inference_steps=2, seed=3))
    plain, = views.gallery(result, show_boxes=False)
    boxed, = views.gallery(result, show_boxes=True)
    assert plain[0].size == (64, 64) and boxed[0].size == (256, 256) and plain[1] == "seed 3"
    first = tuple(int(views.BOX_COLOURS[0][i:i + 2], 16) for i in (1, 3, 5))
    assert boxed[0].getpixel((64, 128)) == first  # the left edge of the box, drawn in the first canvas colour
    assert boxed[0].getpixel((128, 128)) == plain[0].getpixel((32, 32))  # inside, the image is untouched


def test_banner_and_examples_come_from_the_model_folder(tmp_path):
    mini = Studio("mini", tmp_path, device="cpu")
    assert "32x32 toy images" in views.banner(mini.notices())
    assert [e.prompt for e in mini.defaults.examples][0] == "a red star and a blue circle on grass"
    assert {o.name for o in mini.example_objects()} >= {"candy band diamond", "ruby checker star"}
    training = mini.defaults.training
    assert (training.method, training.steps, training.learning_rate, training.rank) == ("full", 400, 1e-4, 32)


def test_compose_defaults_to_the_models_grounding_fraction(tmp_path):
    assert Studio("mini", tmp_path, device="cpu").pipe.settings().grounding_fraction == 1.0  # mini's pacgen.json
    assert Studio("tiny", tmp_path, device="cpu").pipe.settings().grounding_fraction == 0.3  # GLIGEN's own


def test_the_first_example_uses_the_newest_concept(tmp_path, random_concept):
    studio = Studio("tiny", tmp_path / "home", device="cpu")
    assert views.examples(studio.defaults.examples, studio.newest_concept())[0] == studio.defaults.examples[0]
    assert compose_tab.concept_example_button(studio.newest_concept()) == {"value": "", "visible": False}
    for name, created in (("zebra", "2026-01-02T00:00:00+00:00"), ("aardvark", "2026-03-04T00:00:00+00:00")):
        concept = random_concept(studio.pipe, name, identifier=name[:3])
        concept.created = created
        (concept.path / "concept.json").write_text(concept.to_json())
        studio.library.concepts_dir.mkdir(parents=True, exist_ok=True)
        concept.path.rename(studio.library.concepts_dir / name)
    studio.sync_library()
    first = views.examples(studio.defaults.examples, studio.newest_concept())[0]
    assert first.boxes[0].label == "<aardvark>" and "<aardvark>" in first.prompt  # newest, not first by name
    # Compose's example button for it, as every refresh of the page makes it, and what pressing it fills in.
    button = compose_tab.concept_example_button(studio.newest_concept())
    assert button == {"value": "a photo of <aardvark> on grass", "visible": True}
    assert compose_tab.newest_example(studio) == (button["value"], [["<aardvark>", *views.FIRST_EXAMPLE_BOX]], "")


def test_training_previews_are_enlarged_by_whole_pixels():
    from PIL import Image

    from pacgen.training import TrainEvent

    shown = views.TrainView()
    small = Image.new("RGB", (32, 32), (10, 200, 30))
    small.putpixel((0, 0), (255, 0, 0))
    shown.add(TrainEvent("training", 1, 2, 0.5, 0.5, preview=small))
    big = shown.previews[0]
    assert big.size == (128, 128) and big.getpixel((3, 3)) == (255, 0, 0) and big.getpixel((4, 4)) == (10, 200, 30)


def test_the_augmentation_preview_shows_mirror_images_only_when_asked(studio, tmp_path):
    size = studio.size
    ramp = np.tile(np.linspace(0, 255, size, dtype=np.uint8)[None, :, None], (size, 1, 3))
    path = tmp_path / "ramp.png"
    Image.fromarray(ramp).save(path)

    def mirrored_tiles(mirror):
        sheet = np.asarray(studio.preview_augmentation([str(path)] * 3, 0.0, mirror, count=16))  # strength 0: whole photos
        tiles = [sheet[r * size:(r + 1) * size, c * size:(c + 1) * size] for r in range(4) for c in range(4)]
        return sum(np.array_equal(tile, ramp[:, ::-1]) for tile in tiles)

    assert mirrored_tiles(False) == 0 and mirrored_tiles(True) > 0


def test_after_a_training_the_estimate_counts_its_steps_as_fast_as_that_training_ran_them(tmp_path, photos):
    studio = Studio("tiny", tmp_path, device="cpu")
    settings = TrainSettings(steps=4, prior_preservation=False, samples_per_photo=1)
    assert studio.estimate("star", settings).basis.startswith("measured here")
    events = list(studio.train(photos, "my star", "star", settings))
    assert events[-1].phase == "done", events[-1].message
    step_s = [event.step_s for event in events if event.phase == "training"][-1]
    after = studio.estimate("star", settings)
    assert after.basis.startswith("measured here, training steps as the last training here ran them at 64 px: ")
    assert after.parts["training steps"] == pytest.approx(settings.steps * step_s)
    assert "last training" in studio.estimate("star", settings.override(resolution=studio.size)).basis  # the same size
    assert "last training" not in studio.estimate("star", settings.override(batch_size=2)).basis


def test_estimates_asked_at_once_share_one_measurement_which_is_renewed_once_stale(tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    studio = Studio("tiny", tmp_path, device="cpu")
    settings = TrainSettings(steps=4, prior_preservation=False)
    measured = []
    real = replicas_module.measure_rates
    monkeypatch.setattr(replicas_module, "measure_rates", lambda *args: measured.append(1) or real(*args))
    with ThreadPoolExecutor(3) as pool:  # a picked example changes photos and class noun at once
        bases = {estimate.basis for estimate in pool.map(lambda _: studio.estimate("star", settings), range(3))}
    assert len(measured) == 1 and len(bases) == 1 and bases.pop().startswith("measured here at 64 px")
    studio.estimate("star", settings)
    assert len(measured) == 1  # still fresh
    monkeypatch.setattr(session_module, "RATES_FRESH_S", 0.0)
    studio.estimate("star", settings)
    assert len(measured) == 2  # the load may have changed since: measured again


def test_while_the_model_is_busy_the_estimate_says_what_it_rests_on(tmp_path):
    studio = Studio("tiny", tmp_path, device="cpu")
    settings = TrainSettings(steps=4, prior_preservation=False)
    with studio.replicas.take():  # a training or a generation holds the model
        text = views.estimate(studio.estimate("star", settings), settings.steps, 5)
    assert text.startswith("How long training takes is not known yet: speeds are not measured here yet, and the model "
                           "is busy now: change a setting once it is free.\n\n<details>")
    studio.estimate("star", settings)
    with studio.replicas.take():
        basis = studio.estimate("star", settings.override(batch_size=2)).basis
    assert basis.startswith("measured for other settings (the model is busy now)")


def test_cancel_answers_once_the_training_has_stopped_with_what_its_own_stream_ends_with(tmp_path, photos):
    studio = Studio("tiny", tmp_path, device="cpu")
    assert studio.cancel() == "Nothing of yours is training."
    events = studio.train(photos, "long one", "star", TrainSettings(steps=3000, prior_preservation=False,
                                                                    preview_every=0))
    while next(events).phase != "training":  # running its steps
        pass
    assert studio.cancel() == "Training cancelled: nothing was saved."  # not "Cancelling…": it has stopped
    assert not studio.training_active()
    assert [event.phase for event in events][-1] == "cancelled"
    assert "long one" not in studio.concept_names()
    # Pressed again (a page whose Cancel was still on): it says so, not how the training that is over ended.
    assert train_tab.cancel_message(studio) == "Nothing of yours is training."


def test_no_estimate_and_nothing_measured_before_photos_are_chosen(tmp_path, photos):
    studio = Studio("tiny", tmp_path, device="cpu")
    values = [getattr(studio.defaults.training, f.name) for f in train_tab.FIELDS]
    assert train_tab.estimate_text(studio, [], "", *values) == ""
    assert train_tab.estimate_text(studio, None, "star", *values) == ""
    assert not studio.rates  # the page's load measured nothing
    text = train_tab.estimate_text(studio, photos, "star", *values)
    assert text.startswith("Training takes about **") and studio.rates
