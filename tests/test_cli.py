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
