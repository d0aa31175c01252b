"""One name for one setting on every surface: the Gradio API, the CLI and Python read `pacgen.settings`."""

import pytest

import app
from pacgen.app.cli import build_parser
from pacgen.app.session import Studio
from pacgen.settings import SampleSettings, TrainSettings, surfaced


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    studio = Studio("mini", tmp_path_factory.mktemp("home"), device="cpu")
    return studio, app.build_ui(studio).get_api_info()["named_endpoints"]


def parameters(endpoint: dict) -> dict:
    return {p["parameter_name"]: p.get("parameter_default") for p in endpoint["parameters"]}


def test_the_api_is_the_documented_endpoints_only(api):
    _, endpoints = api
    assert sorted(endpoints) == sorted(["/train", "/cancel_training", "/resume_training", "/discard_training",
                                        "/preview_augmentation", "/generate",
                                        "/list_concepts", "/delete_concept", "/export_concept", "/import_concept",
                                        "/import_kohya", "/push_to_hub"])


def test_api_parameters_are_the_settings_fields_with_the_models_defaults(api):
    studio, endpoints = api
    generate = parameters(endpoints["/generate"])
    unset = ["concept_guidance_scale"]  # no value of its own (the guidance scale decides): optional, so last
    assert list(generate) == ["prompt", "negative_prompt", "boxes",
                              *[f.name for f in surfaced(SampleSettings) if f.name not in unset], "show_boxes",
                              *unset, "scene"]
    assert generate["concept_guidance_scale"] is None
    assert generate["grounding_fraction"] == 1.0 and generate["seed"] == -1  # mini's own default; -1 = random
    assert generate["width"] == generate["height"] == studio.size
    train = parameters(endpoints["/train"])
    assert list(train) == ["photos", "name", "class_noun", *[f.name for f in surfaced(TrainSettings)]]
    assert (train["method"], train["steps"], train["learning_rate"]) == ("full", 400, 1e-4)  # assets/mini/pacgen.json


@pytest.mark.parametrize("command, cls", [("generate", SampleSettings), ("train", TrainSettings)])
def test_cli_flags_are_the_settings_fields(command, cls):
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    dests = {action.dest for action in sub._actions}
    assert {f.name for f in surfaced(cls)} <= dests
    flags = {opt for action in sub._actions for opt in action.option_strings}
    for f in surfaced(cls):
        flag = "--" + f.name.replace("_", "-")
        assert flag in flags or "--no-" + flag[2:] in flags


def test_the_readme_documents_every_setting_once():
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = text.split("## Settings", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    for cls in (SampleSettings, TrainSettings):
        for f in surfaced(cls):
            assert sum(f"`{f.name}`" in row for row in rows) >= 1, f.name


def test_an_optional_setting_left_unset_stays_unset_in_the_app():
    """A slider is never empty: an unset optional setting (the concept guidance scale, whose unset means 'the
    guidance scale') would read as its minimum, 0, and concept rows would lose all guidance."""
    from pacgen.app.fields import component
    from pacgen.settings import kind, optional

    for f in surfaced(SampleSettings):
        if optional(f) and kind(f) in ("int", "float") and f.name != "seed":
            box = component(f, None)
            assert box.value is None and box.preprocess(None) is None, f.name
