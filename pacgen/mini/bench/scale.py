"""Scaling past one process and one sitting: batch throughput on 2 processes against 1, and the cost of the
checkpoints that let a killed training resume.

How it measures.
- Batch: the same jobs file (--images images of `tiny`, then of `mini`, a seed per image) runs as
  `python -m pacgen batch` in one process, then as `torchrun --standalone --nproc_per_node 2 -m pacgen batch`, each
  a fresh subprocess with OMP_NUM_THREADS=1 (one thread per process: one device each), back to back. The throughput
  is the batch's own summary (images written / seconds from the moment every process has loaded the model and
  listed the folder to the last image), so model loading is not counted; the wall time of the whole command is shown
  beside it. The images of both runs are compared byte for byte.
- Checkpoints: the state a `mini` training saves (its default method's trained weights as fp32 masters and AdamW's
  two moments, 12 bytes per trained weight) is written with `pacgen.checkpoints.write_state` --repeats times; the
  cost at the default interval is one save's time over `checkpoint_minutes`, and the optimisation step's time
  (`measure_step_seconds`) says how many steps that interval holds.

Run from the repository root: `python -m pacgen.mini.bench.scale` (about 5 minutes on 2 idle cores).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import pacgen.mini  # noqa: F401  (registers `tiny`)
from pacgen.checkpoints import write_state
from pacgen.concepts import Concept
from pacgen.sampling import PACGenPipeline
from pacgen.training import measure_step_seconds

ROOT = Path(__file__).resolve().parents[3]
RATE = re.compile(r"([0-9.]+) images/s on (\d) process")


def run_batch(jobs: Path, out: Path, model: str, processes: int) -> tuple[float, float, str]:
    """Images/s by the batch's own clock, the command's wall time, and its output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    started = time.perf_counter()
    done = subprocess.run([*launcher, "-m", "pacgen", "batch", str(jobs), "--out", str(out), "--model", model,
                           "--device", "cpu"], env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    match = RATE.search(done.stdout)
    if done.returncode or match is None or int(match.group(2)) != processes:
        raise SystemExit(f"batch on {processes} process(es) failed:\n{done.stdout}\n{done.stderr[-3000:]}")
    return float(match.group(1)), wall, done.stdout


def same_bytes(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.glob("*.png"))
    return names == sorted(p.name for p in b.glob("*.png")) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names)


def batch_rows(models: dict[str, dict], work: Path) -> list[str]:
    rows = ["| model | images | steps | 1 process img/s | 2 processes img/s | ratio | wall 1 / 2 (s, with loading) "
            "| same bytes |", "|---|---|---|---|---|---|---|---|"]
    for model, job in models.items():
        jobs = work / f"{model}.jsonl"
        jobs.write_text("\n".join(json.dumps({**job, "seed": k, "num_images": 1}) for k in range(job.pop("images")))
                        + "\n")
        count = len(jobs.read_text().splitlines())
        one, wall_one, _ = run_batch(jobs, work / f"{model}-1", model, 1)
        two, wall_two, _ = run_batch(jobs, work / f"{model}-2", model, 2)
        rows.append(f"| {model} | {count} | {job['num_inference_steps']} | {one:.2f} | {two:.2f} | {two / one:.2f}x "
                    f"| {wall_one:.0f} / {wall_two:.0f} | {same_bytes(work / f'{model}-1', work / f'{model}-2')} |")
        print(rows[-1], file=sys.stderr, flush=True)
    return rows


def checkpoint_rows(work: Path, repeats: int) -> list[str]:
    torch.set_num_threads(1)
    pipe = PACGenPipeline.from_pretrained("mini", device="cpu")
    config = pipe.components.defaults.training.checked()
    comp = pipe.components
    probe = Concept("checkpoint size", "sks", "thing", comp.model_id, comp.fingerprint)
    with pipe.training(probe, config.method, config.rank, config.alpha or config.rank, 0) as weights:
        trained = sum(p.numel() for p in weights.params)
    state = {"weights": [torch.randn(trained)], "optimizer": {"exp_avg": torch.randn(trained),
                                                             "exp_avg_sq": torch.randn(trained)}}
    saves = []
    for _ in range(repeats):
        started = time.perf_counter()
        write_state(work / "checkpoint", state, 1, config.steps)
        saves.append(time.perf_counter() - started)
    save_s = sorted(saves)[len(saves) // 2]
    step_s = measure_step_seconds(pipe, config)
    interval = config.checkpoint_minutes * 60
    size = (work / "checkpoint" / "state.pt").stat().st_size / 2**20
    return ["| model, method | checkpoint MiB | one save (s, median) | training step (s) | default interval | "
            "steps per interval | cost at the default |", "|---|---|---|---|---|---|---|",
            f"| mini, {config.method} | {size:.0f} | {save_s:.2f} | {step_s:.2f} | {interval / 60:g} min | "
            f"{interval / step_s:.0f} | {100 * save_s / interval:.2f}% |"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny-images", type=int, default=24)
    parser.add_argument("--mini-images", type=int, default=8)
    parser.add_argument("--mini-steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    prompt = "a red star and a blue circle on grass"
    boxes = [["a red star", 0.05, 0.1, 0.45, 0.5], ["a blue circle", 0.55, 0.5, 0.95, 0.9]]
    models = {"tiny": {"prompt": prompt, "boxes": boxes, "num_inference_steps": 10, "images": args.tiny_images},
              "mini": {"prompt": prompt, "boxes": boxes, "num_inference_steps": args.mini_steps,
                       "images": args.mini_images}}
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        rows = batch_rows(models, work)
        rows += [""] + checkpoint_rows(work, args.repeats)
    print(f"{os.cpu_count()} CPUs, load average {load[0]:.1f} at the start and {os.getloadavg()[0]:.1f} at the end; "
          f"torch {torch.__version__}\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
