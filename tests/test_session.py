"""The app's facade without a server: canvas <-> table conversion, row parsing, model choice."""

import pytest

from pacgen import studio as studio_module
from pacgen.errors import PACGenError
from pacgen.studio import Studio, resolve_model


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    return Studio("tiny", tmp_path_factory.mktemp("home"), device="cpu")


def test_canvas_and_table_round_trip(studio):
    rows = [["a red star", 0.1, 0.2, 0.5, 0.6], ["a blue circle", 0.5, 0.5, 1.0, 1.0]]
    value = studio.annotations_from_boxes(rows, 64, 32)
    assert value["image"].size == (512, 256)
    assert value["boxes"][0]["color"].startswith("rgb(")
    back = studio.boxes_from_annotations(value)
    for got, want in zip(back, rows):
        assert got[0] == want[0] and got[1:] == pytest.approx(want[1:], abs=2e-3)


def test_rows_name_concepts_with_or_without_brackets(studio, random_concept):
    studio.pipe.load_concept(random_concept(studio.pipe, "my dog"))
    boxes = studio.parse_rows([["my dog", 0, 0, 0.5, 0.5], ["<my dog>", 0.5, 0.5, 1, 1], ["a ball", 0, 0.5, 0.5, 1],
                               ["", "", "", "", ""]])
    assert [b.label for b in boxes] == ["<my dog>", "<my dog>", "a ball"]
    studio.pipe.unload_concept("my dog")


@pytest.mark.parametrize(
    "rows, message",
    [([["", 0, 0, 1, 1]], "box 1 has no label"), ([["ball", 0, "left", 1, 1]], "must be numbers"),
     ([["ball", 0, 0, 1]], "expected 5 columns")],
)
def test_bad_rows_are_named(studio, rows, message):
    with pytest.raises(PACGenError, match=message):
        studio.parse_rows(rows)


def test_auto_falls_back_to_an_embedded_model_with_a_notice(monkeypatch, tmp_path):
    monkeypatch.setattr(studio_module.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(studio_module, "MINI_DIR", tmp_path / "missing")
    source, notice = resolve_model("auto")
    assert source == "tiny" and "No GPU found" in notice and "random weights" in notice
    assert resolve_model("tiny") == ("tiny", "")


def test_overlay_enlarges_and_draws_boxes(studio):
    result = studio.generate("a ball", "", [["a ball", 0.25, 0.25, 0.75, 0.75]], 2, 7.5, 0.3, True, 3, 1, 64, 64)
    plain, = studio.gallery(result, overlay=False)
    boxed, = studio.gallery(result, overlay=True)
    assert plain[0].size == (64, 64) and boxed[0].size == (256, 256) and plain[1] == "seed 3"
    assert boxed[0].getpixel((64, 128)) != plain[0].resize((256, 256)).getpixel((64, 128))


def test_mini_banner_says_what_the_embedded_model_can_and_cannot_do(tmp_path):
    banner = Studio("mini", tmp_path, device="cpu").banner()
    assert "32x32 toy images" in banner and "in the boxes you draw" in banner


def test_compose_defaults_to_the_models_grounding_fraction(tmp_path):
    assert Studio("mini", tmp_path, device="cpu").default_grounding_fraction() == 1.0  # mini's pacgen.json
    assert Studio("tiny", tmp_path, device="cpu").default_grounding_fraction() == 0.3  # GLIGEN's own
