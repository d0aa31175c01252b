"""Training throughput: PACGen's concept trainer vs diffusers' examples/dreambooth/train_dreambooth_lora.py.

Both train a rank-4 UNet LoRA on the same local `tiny` model folder (`build_tiny().save(...)`) from the
same 3 kit photos: 64 px, batch 1, lr 1e-4, fp32 on CPU, no prior preservation, --steps steps. Each run
is a fresh subprocess of this interpreter (so the same torch) with the same CPU thread count, started as
`python -m` of this module (so both import `pacgen.mini` first), and the trainers alternate over --repeats
rounds; the table gives medians. Measured alike for both:

- steady-state steps/s and CPU ms/step: a wall-clock and a process-CPU-time stamp as each optimizer
  step finishes (ours: each "training" event of `train_concept`; theirs: each update of their "Steps"
  progress bar, recorded by a tqdm subclass installed before their script runs unchanged through
  runpy), over the steps after --warmup; CPU time is robust to preemption on a shared machine;
- time to first step: process start to the end of step 1 (imports, model loading, data preparation);
- wall: the whole subprocess; peak RSS: the subprocess's ru_maxrss (os.wait4).

diffusers' script is not part of this repository. Take it from the `huggingface/diffusers` repository at
the release tag matching the installed diffusers (v0.40.0 was the newest tag available when this was
written), and run everything from the repository root, in an environment that has torchvision for that
script, e.g.:

    git -C diffusers show v0.40.0:examples/dreambooth/train_dreambooth_lora.py > /tmp/train_dreambooth_lora.py
    python -m venv /tmp/benchvenv && /tmp/benchvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 \\
        diffusers==0.42.1 transformers==5.23.0 "accelerate>=1.15,<2" peft==0.21.2 safetensors pillow numpy tqdm
    /tmp/benchvenv/bin/python -m pacgen.mini.bench.train_throughput --reference /tmp/train_dreambooth_lora.py \\
        --threads 1

With tensorboard not installed, their default `--report_to tensorboard` logs nothing (accelerate skips it).
After training, their script fails to reload its LoRA into the folder's StableDiffusionGLIGENPipeline (which
has no `load_lora_weights`); the LoRA is saved by then, and that exit status is reported, not fatal.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

INSTANCE_PROMPT = "a photo of sks star"  # what PACGen's trainer builds: first free identifier + class noun
CLASS_NOUN = "star"


def run_ours(model: str, photos: str, steps: int, resolution: int, stamps: str) -> None:
    """Child: PACGen's trainer, stamping the end of every optimizer step."""
    import torch

    from pacgen.concepts import ConceptLibrary
    from pacgen.sampling import PACGenPipeline
    from pacgen.settings import TrainSettings
    from pacgen.training import train_concept

    pipe = PACGenPipeline.from_pretrained(model, device="cpu", dtype=torch.float32)
    config = TrainSettings(steps=steps, learning_rate=1e-4, rank=4, batch_size=1, resolution=resolution,
                           prior_preservation=False, seed=0)
    with tempfile.TemporaryDirectory() as library:
        events = train_concept(pipe, sorted(Path(photos).glob("*.png")), "bench", CLASS_NOUN, config,
                               ConceptLibrary(library))
        times = [(time.time(), time.process_time()) for event in events if event.phase == "training"]
    Path(stamps).write_text(json.dumps(times))


def run_reference(script: str, stamps: str, script_args: list[str]) -> None:
    """Child: diffusers' script, unchanged, with its "Steps" progress bar stamping each update."""
    import tqdm.auto

    times: list[tuple[float, float]] = []

    class StampedTqdm(tqdm.auto.tqdm):
        def update(self, n=1):
            if self.desc == "Steps":
                times.append((time.time(), time.process_time()))
            return super().update(n)

    tqdm.auto.tqdm = StampedTqdm
    sys.argv = [script, *script_args]
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        Path(stamps).write_text(json.dumps(times))


def measure(name: str, child_args: list[str], work: Path, args: argparse.Namespace) -> dict[str, float]:
    """Run one child and reduce its step stamps; a child that errs after all steps is accepted, and said so."""
    stamps, log = work / f"{name}.json", work / f"{name}.log"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    started = time.time()
    with log.open("w") as out:
        child = subprocess.Popen([sys.executable, "-m", __spec__.name, "--child", str(stamps), *child_args],
                                 stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.time() - started
    times = json.loads(stamps.read_text()) if stamps.exists() else []
    if len(times) != args.steps:
        sys.exit(f"{name}: {len(times)} of {args.steps} steps ran; end of its output:\n{log.read_text()[-3000:]}")
    if child.returncode:
        lines = log.read_text().strip().splitlines()
        error = next((line for line in reversed(lines) if "Error" in line), lines[-1])
        print(f"note: {name} exited with status {child.returncode} after all {args.steps} steps: {error[:200]}",
              file=sys.stderr)
    (wall_end, cpu_end), (wall_start, cpu_start), steps = times[-1], times[args.warmup - 1], args.steps - args.warmup
    return {"steps_s": steps / (wall_end - wall_start), "cpu_ms": 1000 * (cpu_end - cpu_start) / steps,
            "first_s": times[0][0] - started, "wall_s": wall, "rss_mib": usage.ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", required=True, help="path to diffusers' train_dreambooth_lora.py")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the steady-state rate")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads of every trainer")
    args = parser.parse_args()

    import diffusers
    import torch

    from pacgen.mini.kit import KIT, kit_photos
    from pacgen.mini.tiny import build_tiny

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model, photos = work / "model", work / "photos"
        build_tiny().save(model)
        photos.mkdir()
        for k, photo in enumerate(kit_photos(KIT[0], n=3, size=args.resolution)):
            photo.save(photos / f"{k}.png")
        common = ["--pretrained_model_name_or_path", str(model), "--instance_data_dir", str(photos),
                  "--instance_prompt", INSTANCE_PROMPT, "--resolution", str(args.resolution),
                  "--train_batch_size", "1", "--max_train_steps", str(args.steps), "--rank", "4",
                  "--learning_rate", "1e-4", "--mixed_precision", "no", "--checkpointing_steps", "1000000",
                  "--seed", "0"]
        trainers = {
            "pacgen train_concept": ["ours", str(model), str(photos), str(args.steps), str(args.resolution)],
            "diffusers train_dreambooth_lora.py": ["reference", args.reference, *common],
            "diffusers … --pre_compute_text_embeddings": ["reference", args.reference, *common,
                                                          "--pre_compute_text_embeddings"],
        }
        results: dict[str, list[dict[str, float]]] = {name: [] for name in trainers}
        for repeat in range(args.repeats):
            for k, (name, child_args) in enumerate(trainers.items()):
                if child_args[0] == "reference":
                    child_args = [*child_args, "--output_dir", str(work / f"out{repeat}-{k}")]
                results[name].append(measure(f"run{repeat}-{k}", child_args, work, args))

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    baseline = median("diffusers train_dreambooth_lora.py", "steps_s")
    print(f"tiny model, {args.resolution} px, batch 1, LoRA rank 4, fp32 CPU, no prior preservation, "
          f"{args.steps} steps; median of {args.repeats}; {args.threads} thread(s); torch {torch.__version__}, "
          f"diffusers {diffusers.__version__}\n")
    baseline_cpu = median("diffusers train_dreambooth_lora.py", "cpu_ms")
    print(f"| trainer | steps/s (steps {args.warmup + 1}–{args.steps}) | ms/step | CPU ms/step | time to first step s "
          "| wall s | peak RSS MiB | throughput vs diffusers | (by CPU time) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in trainers:
        rate, cpu = median(name, "steps_s"), median(name, "cpu_ms")
        print(f"| {name} | {rate:.2f} | {1000 / rate:.1f} | {cpu:.1f} | {median(name, 'first_s'):.1f} | "
              f"{median(name, 'wall_s'):.1f} | {median(name, 'rss_mib'):.0f} | {rate / baseline:.2f}× "
              f"| {baseline_cpu / cpu:.2f}× |")
    ours = median("pacgen train_concept", "steps_s") / baseline
    print(f"\ntarget: pacgen ≥ 1.0× diffusers' throughput: {ours:.2f}× ({'ok' if ours >= 1.0 else 'MISSED'})")


def child() -> None:
    """`--child STAMPS ours MODEL PHOTOS STEPS RESOLUTION` or `--child STAMPS reference SCRIPT ARGS...`."""
    stamps, kind, *rest = sys.argv[2:]
    if kind == "ours":
        model, photos, steps, resolution = rest
        run_ours(model, photos, int(steps), int(resolution), stamps)
    else:
        run_reference(rest[0], stamps, rest[1:])


if __name__ == "__main__":
    child() if sys.argv[1:2] == ["--child"] else main()
