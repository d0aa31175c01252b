"""`python -m pacgen batch`: a JSONL file checked whole, images written atomically with their parameters and a
manifest row, a rerun that skips what exists, and the same bytes on one process or two."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from pacgen.app.cli import main
from pacgen.batch import MANIFEST, read_jobs
from pacgen.concepts import ConceptLibrary, slugify

FAST = {"num_inference_steps": 2}
ROOT = Path(__file__).resolve().parent.parent


def write_jobs(folder: Path, *lines) -> Path:
    path = folder / "jobs.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def batch(capsys, jobs, out, *extra, data_dir=None):
    args = ["batch", str(jobs), "--out", str(out), "--model", "tiny", "--device", "cpu", *extra]
    code = main(args + (["--data-dir", str(data_dir)] if data_dir else []))
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines(), captured.out


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]


GOOD = {"prompt": "a dog on grass", "boxes": [["a dog", 0.1, 0.4, 0.5, 0.9]], "seed": 5, "num_images": 2, **FAST}


def test_bad_lines_are_reported_by_line_and_field_before_any_work(tmp_path, capsys):
    jobs = write_jobs(tmp_path, GOOD, "# a comment", {"prompt": "a cat", "num_inference_steps": 0},
                      {"prompt": "x", "boxes": [["a", 1, 2]]}, {"prompt": "a", "sed": 2}, "not json", "",
                      {"prompt": "<nobody> here"}, {"prompt": "a", "boxes": [["a", 0.5, 0.1, 0.2, 0.9]]},
                      {"negative_prompt": "blur"})
    code, err, _ = batch(capsys, jobs, tmp_path / "out")
    assert code == 2 and not (tmp_path / "out").exists()
    assert "line 3, num_inference_steps: num_inference_steps must be between 1 and 500" in err[0]
    assert "line 4, boxes: box 1 must be [label, x0, y0, x1, y1]" in err[1]
    assert "line 5, sed: unknown field" in err[2]
    assert "line 6, line: not valid JSON" in err[3]
    assert "line 8, concepts: no concept named 'nobody'" in err[4]
    assert "line 9, boxes: " in err[5] and "x0=0.5 must be smaller than x1=0.2" in err[5]
    assert "line 10, prompt: missing or empty" in err[6]
    assert err[-1].startswith("error: 7 invalid line(s)") and "--skip-invalid" in err[-1]


def test_skip_invalid_runs_the_rest_with_parameters_manifest_and_summary(tmp_path, capsys):
    jobs = write_jobs(tmp_path, GOOD, {"prompt": "a", "sed": 2}, {"prompt": "a red ball", **FAST})
    code, err, out = batch(capsys, jobs, tmp_path / "out", "--skip-invalid")
    assert code == 0 and "line 2, sed" in err[0]
    assert "3 image(s): 3 written, 0 already there, 1 invalid line(s) skipped" in out
    names = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert names == ["line00001-0.png", "line00001-1.png", "line00003-0.png"]
    parameters = Image.open(tmp_path / "out" / "line00001-1.png").text["parameters"]
    assert parameters.startswith("a dog on grass\nSteps: 2, Sampler: DPM++ 2M, CFG scale: 7.5, Seed: 6, Size: 64x64")
    manifest = rows(tmp_path / "out")
    assert [(r["file"], r["seed"]) for r in manifest[:2]] == [("line00001-0.png", 5), ("line00001-1.png", 6)]
    assert manifest[0]["model"] == "tiny" and manifest[0]["model_fingerprint"] and manifest[0]["time"]
    # A line without a seed gets one from its text: a rerun elsewhere makes the same image.
    assert manifest[2]["seed"] == read_jobs(jobs)[0][1].seed


def test_a_rerun_makes_only_what_is_missing_and_refuses_images_of_another_line(tmp_path, capsys):
    jobs = write_jobs(tmp_path, GOOD)
    out = tmp_path / "out"
    assert batch(capsys, jobs, out)[0] == 0
    first, second = out / "line00001-0.png", out / "line00001-1.png"
    kept = first.stat().st_mtime_ns
    reference = second.read_bytes()
    second.unlink()
    (out / MANIFEST).write_text("")  # killed after the first image was renamed in, before its row was written
    code, _, printed = batch(capsys, jobs, out)
    assert code == 0 and "2 image(s): 1 written, 1 already there" in printed
    assert first.stat().st_mtime_ns == kept and second.read_bytes() == reference
    recovered, made = rows(out)
    assert (recovered["file"], recovered["seconds"], made["file"]) == ("line00001-0.png", None, "line00001-1.png")
    write_jobs(tmp_path, {**GOOD, "prompt": "a cat on grass"})
    code, err, _ = batch(capsys, jobs, out)
    assert code == 2 and "line00001-0.png and 1 more in 'out' were made from another job line" in err[-1]


def test_concepts_come_from_the_library_and_their_versions_enter_the_manifest(tmp_path, capsys, pipe, random_concept):
    home = tmp_path / "home"
    concept = random_concept(pipe)
    shutil.copytree(concept.path, ConceptLibrary(home).concepts_dir / slugify("my dog"))
    jobs = write_jobs(tmp_path, {"prompt": "<my dog> on grass", "boxes": [["<my dog>", 0.2, 0.2, 0.8, 0.8]],
                                 "seed": 1, **FAST})
    code, _, _ = batch(capsys, jobs, tmp_path / "out", data_dir=home)
    assert code == 0
    (row,) = rows(tmp_path / "out")
    assert list(row["concepts"]) == ["my dog"] and len(row["concepts"]["my dog"]) == 16


def run_batch(args: list[str], out: Path, jobs: Path, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([*args, "-m", "pacgen", "batch", str(jobs), "--out", str(out), "--model", "tiny"],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def finished(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    return output


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    folder = tmp_path_factory.mktemp("many")
    jobs = write_jobs(folder, {**GOOD, "num_images": 3}, {"prompt": "a red ball", "seed": 9, "num_images": 3,
                                                            "num_inference_steps": 4})
    reference = folder / "one"
    finished(run_batch([sys.executable], reference, jobs))
    return jobs, reference


def same_images(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.glob("*.png"))
    assert len(names) == 6 and names == sorted(p.name for p in b.glob("*.png"))
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


@pytest.mark.slow
def test_two_processes_make_the_same_bytes_as_one(many, tmp_path):
    jobs, reference = many
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    output = finished(run_batch(torchrun, tmp_path / "two", jobs))
    assert "6 written" in output and "on 2 process(es)" in output
    same_images(reference, tmp_path / "two")
    assert len(rows(tmp_path / "two")) == 6


@pytest.mark.slow
def test_a_batch_killed_mid_way_continues_where_it_stopped(many, tmp_path):
    jobs, reference = many
    out = tmp_path / "killed"
    process = run_batch([sys.executable], out, jobs, start_new_session=True)
    deadline = time.monotonic() + 300
    while not list(out.glob("line*.png")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    made = len(list(out.glob("line*.png")))
    assert 1 <= made
    output = finished(run_batch([sys.executable], out, jobs))
    assert f"{6 - made} written, {made} already there" in output
    same_images(reference, out)
    assert sorted({r["file"] for r in rows(out)}) == sorted(p.name for p in out.glob("*.png"))
    assert not list(out.glob(".*.tmp"))
