"""The mini benchmark end to end on `tiny` (a few steps): every method and study row is scored and reported."""
import pytest
import torch

from pacgen.concepts import ConceptLibrary
from pacgen.mini.bench import __main__ as bench
from pacgen.mini.bench.methods import AFTER, METHODS, PLACEMENTS, RECIPES, REFERENCES, Training, quick_rows, study
from pacgen.mini.bench.report import COLUMNS
from pacgen.models import load_components
from pacgen.mini.score import train_scorer


@pytest.mark.slow
def test_bench_study_reports_every_method_and_variant(tmp_path, monkeypatch):
    identifiers = []

    def recording(*args, **kwargs):
        for event in bench_train_concept(*args, **kwargs):
            identifiers.extend([event.concept.identifier] if event.concept else [])
            yield event

    bench_train_concept = bench.train_concept
    monkeypatch.setattr(bench, "train_concept", recording)
    threads = torch.get_num_threads()
    scorer = train_scorer(64, scenes=20, steps=1, log=False).save(tmp_path / "scorer.safetensors")
    try:
        bench.main(["--model", "tiny", "--concepts", "1", "--seeds", "1", "--steps", "2", "--train-steps", "2",
                    "--class-images", "1", "--scorer", str(scorer), "--work", str(tmp_path / "work"),
                    "--out", str(tmp_path / "docs"), "--threads", "1", "--study"])
    finally:
        torch.set_num_threads(threads)
    report = (tmp_path / "docs" / "mini_study.md").read_text()
    studied = study("lora")  # tiny's default method
    for method in METHODS + studied:
        assert f"| {method.name} |" in report
    assert "| identity (corner) |" in report.replace(" | ", " |\n| ") and "keeps colours" in report
    assert "Gates, for the app's default (LoRA (attention) + augmentation + regional)" in report
    assert "--study" in report and (tmp_path / "docs" / "mini_study.png").is_file()
    # the report names the weights it measured: the fingerprint (what concepts are tied to) and the VAE apart
    tiny = load_components("tiny", device="cpu")
    assert f"model fingerprint `{tiny.fingerprint}`, VAE `{tiny.vae_digest}`" in report
    assert "| 1. identified, ruby checker star |" in report and "| 2. shape kept (corner) |" in report
    # the calibration rows are scored on the two-object scenes too: the renderer's own drawing is identified in every
    # one, and the gate names what mini's VAE allows (a perfect generator's ceiling)
    truth = next(line for line in report.splitlines() if line.startswith(f"| {REFERENCES[0]} |"))
    assert truth.split(" | ")[COLUMNS.index("identified") + 1] == "100%"
    assert "its truth through the VAE: " in report and f"| concept | {METHODS[0].name} |" in report
    assert f"| {AFTER} |" in report and (tmp_path / "docs" / "mini_study_pairs.png").is_file()
    assert not (tmp_path / "docs" / "mini_bench.md").exists()  # a study leaves the benchmark's report alone
    assert ConceptLibrary(tmp_path / "work").list() == []  # each concept's LoRAs free their identifier words
    # every method's concept is prompted with the same word, so no method gets a luckier embedding
    trainings = {m.training for m in METHODS + studied if m.training}
    assert len(identifiers) == len(trainings) and len(set(identifiers)) == 1


def test_the_benchmark_trains_the_apps_default_exactly_as_the_app_does():
    defaults = load_components("mini", device="cpu").defaults.training
    assert defaults.override(**RECIPES[defaults.method]) == defaults


def test_caption_modifier_concept_is_asked_for_small_objects_far_away():
    method = next(m for m in study("lora-all") if m.training.augment == "modifiers")
    assert method.prompt_words(PLACEMENTS["corner"]) == ", far away"
    assert method.prompt_words(PLACEMENTS["centre"]) == ""
    assert METHODS[-1].prompt_words(PLACEMENTS["corner"]) == ""


def test_train_and_sample_flags_change_every_trained_row_and_quick_rows_keep_the_apps_default():
    args = bench.parse_args(["--train-set", "steps=800", "--train-set", "seed=3",
                             "--train-set", "augment.zoom_out_scale=[0.5,0.9]",
                             "--sample-set", "concept_guidance_scale=4", "--train-steps", "400"])
    defaults = load_components("mini", device="cpu").defaults.training
    augmented = bench.train_settings(defaults, args, Training("full", "pacgen"))
    plain = bench.train_settings(defaults, args, Training("full", "plain"))
    assert augmented.steps == plain.steps == 800 and augmented.seed == 3  # --train-set wins over --seed
    assert args.sample_changes == {"concept_guidance_scale": 4}
    assert augmented.augment.zoom_out_scale == (0.5, 0.9) and plain.augment.zoom_out_prob == 0
    assert [m.name for m in quick_rows("full")] == [METHODS[0].name, "PACGen (full) + augmentation + regional"]
    with pytest.raises(SystemExit):
        bench.parse_args(["--first", "4", "--concepts", "3"])  # past the kit's six
