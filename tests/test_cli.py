import subprocess
import sys

import pytest
from PIL import Image

from pacgen.app.cli import main

BASE = ["generate", "--model", "tiny", "--device", "cpu", "--prompt", "a dog", "--num-inference-steps", "2"]


def run(capsys, *extra):
    code = main(BASE + list(extra))
    return code, capsys.readouterr().err.strip().splitlines()


def test_generate_writes_pngs_with_their_settings(tmp_path, capsys):
    out = tmp_path / "img.png"
    code, _ = run(capsys, "--box", "a dog=0.1,0.2,0.5,0.9", "--box", "a red ball=0.6,0.6,0.9,0.9",
                  "--seed", "0", "--num-images", "2", "--out", str(out))
    assert code == 0
    images = [Image.open(tmp_path / f"img-{k}.png") for k in range(2)]
    assert images[0].size == (64, 64)
    assert '"seed": 1' in images[1].text["pacgen"]


@pytest.fixture
def concept_dirs(tmp_path, pipe, random_concept):
    good = random_concept(pipe).path
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "concept.json").write_text("{not json")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "concept.json").write_text((good / "concept.json").read_text())
    (pickled / "pytorch_lora_weights.safetensors").write_bytes(b"\x80\x04pickle, not safetensors")
    return {"good": good, "corrupt": corrupt, "pickled": pickled, "missing": tmp_path / "nope"}


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--box", "dog=0.5,0.1,0.2,0.9"], "x0=0.5 must be smaller than x1=0.2"),
        (["--box", "dog=0.1,0.9,0.5,0.2"], "y0=0.9 must be smaller than y1=0.2"),
        (["--box", "dog=0.1,0.1,0.5,1.5"], "outside [0, 1]"),
        (["--box", "dog=0.5,0.5,0.51,0.51"], "too small"),
        (["--box", "dog=0,0,1,1"] * 31, "at most 30"),
        (["--box", "dog " * 80 + "=0,0,1,1"], "tokens long"),
        (["--box", "<cat>=0,0,1,1"], "unknown concept '<cat>'"),
        (["--width", "60"], "multiples of 8"),
        (["--num-inference-steps", "0"], "num_inference_steps must be between 1 and 500"),
        (["--guidance-scale", "-2"], "guidance_scale must be between 0 and 30"),
        (["--box", "dog:0,0,1,1"], "expected LABEL=x0,y0,x1,y1"),
        (["--seed", "1.5"], "seed must be a whole number, got 1.5"),
        (["--num-images", "2.5"], "num_images must be a whole number, got 2.5"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, extra, message):
    code, err = run(capsys, *extra)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


@pytest.mark.parametrize(
    "which, message",
    [("missing", "concept folder not found"), ("corrupt", "is corrupt"), ("pickled", "not a readable safetensors file")],
)
def test_bad_concept_files_exit_2(capsys, concept_dirs, which, message):
    code, err = run(capsys, "--concept", str(concept_dirs[which]), "--data-dir", str(concept_dirs["good"].parent))
    assert code == 2
    assert len(err) == 1 and message in err[0]


def test_concept_from_folder_is_used(capsys, concept_dirs, tmp_path):
    code, _ = run(capsys, "--concept", str(concept_dirs["good"]), "--box", "<my dog>=0.1,0.1,0.6,0.6",
                  "--out", str(tmp_path / "c.png"))
    assert code == 0 and (tmp_path / "c.png").exists()


def test_module_entry_point_reports_offline_hub_model_clearly(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pacgen", "generate", "--model", "someone/not-here", "--prompt", "x",
         "--out", str(tmp_path / "x.png")],
        capture_output=True, text=True, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: Could not load the Hub repo 'someone/not-here'")
    assert "--model mini" in proc.stderr and "Traceback" not in proc.stderr
    assert "torchvision" not in proc.stderr  # transformers' notice about its PIL fallback is hidden (pacgen.quiet)


def test_only_the_torchvision_notice_is_hidden():
    import logging

    from pacgen.quiet import TORCHVISION_FALLBACK, hide_torchvision_fallback_notice

    hide_torchvision_fallback_notice()
    hide_torchvision_fallback_notice()
    logger = logging.getLogger("transformers.utils.import_utils")
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)  # its own handler: whether transformers' loggers propagate depends on earlier tests
    try:
        logger.warning(f"`CLIPImageProcessor` {TORCHVISION_FALLBACK} `CLIPImageProcessorPil`")
        logger.warning("some other notice")
    finally:
        logger.removeHandler(handler)
    assert seen == ["some other notice"]
    assert len(logger.filters) == 1


def _photo_files(photos, folder) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{k}.png" for k in range(len(photos))]
    for photo, path in zip(photos, paths):
        photo.save(path)
    return [str(p) for p in paths]


TRAIN = ["train", "--model", "tiny", "--device", "cpu", "--class-noun", "box", "--steps", "4", "--no-prior-preservation"]


@pytest.mark.slow  # trains
def test_training_on_a_fresh_machine_saves_the_concept_with_its_previews(tmp_path, photos, capsys, monkeypatch):
    """A HOME with no ~/.pacgen yet: the library is made, and the previews go into the concept's own folder. (In
    this process: `python -m pacgen` itself is run by the offline-hub test; a fresh one cost 10 s of imports.)"""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.delenv("PACGEN_HOME", raising=False)
    monkeypatch.setenv("HOME", str(home))
    code = main([*TRAIN, "--preview-every", "4", "--name", "x", "--images", *_photo_files(photos, tmp_path / "photos")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    folder = home / ".pacgen" / "concepts" / "x"
    assert (folder / "concept.json").is_file() and "saved concept 'x'" in captured.out
    assert [p.name for p in (folder / "previews").iterdir()] == ["preview-00004.png"]
    assert not list((home / ".pacgen").glob("*.png"))  # nothing loose in the library root
    assert "Traceback" not in captured.err


def test_training_into_a_new_data_dir_keeps_the_concept_when_the_previews_cannot_be_written(tmp_path, photos,
                                                                                            capsys):
    data_dir = tmp_path / "not" / "yet" / "there"
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    code = main([*TRAIN, "--preview-every", "4", "--name", "kept", "--data-dir", str(data_dir),
                 "--previews", str(blocked / "previews"),
                 "--images", *_photo_files(photos, tmp_path / "photos")])
    captured = capsys.readouterr()
    assert code == 0
    assert (data_dir / "concepts" / "kept" / "concept.json").is_file()
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "previews could not be written" in warnings[0] and "Traceback" not in captured.err


def test_a_failure_after_the_concept_is_saved_is_one_line_and_the_concept_stays(tmp_path, photos, capsys,
                                                                                  monkeypatch):
    from pacgen.sampling import PACGenPipeline

    def broken(self, concept):
        raise RuntimeError("out of memory\nwhile loading")

    monkeypatch.setattr(PACGenPipeline, "load_concept", broken)
    code = main([*TRAIN, "--name", "kept", "--data-dir", str(tmp_path / "lib"),
                 "--images", *_photo_files(photos, tmp_path / "photos")])
    err = capsys.readouterr().err
    assert code == 0 and (tmp_path / "lib" / "concepts" / "kept" / "concept.json").is_file()
    assert "warning: after saving it, RuntimeError: out of memory while loading" in err.splitlines()


@pytest.mark.parametrize("command", ["generate", "train", "batch"])
def test_every_command_prints_its_help(command, capsys):
    # A setting's help with a per cent sign ("over 5% of the time") once made argparse crash on `train --help`.
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "usage:" in text
    if command == "train":
        assert "--no-grounded" in text and "5% of the time" in text
