"""Scaling past one process and one sitting: batch throughput on 2 processes against 1, the app on 2 devices against
1, and the cost of the checkpoints that let a killed training resume.

How it measures.
- Batch: the same jobs file (--images images of `tiny`, then of `mini`, a seed per image) runs as
  `python -m pacgen batch` in one process, then as `torchrun --standalone --nproc_per_node 2 -m pacgen batch`, each
  a fresh subprocess with OMP_NUM_THREADS=1 (one thread per process: one device each), back to back. The throughput
  is the batch's own summary (images written / seconds from the moment every process has loaded the model and
  listed the folder to the last image), so model loading is not counted; the wall time of the whole command is shown
  beside it. The images of both runs are compared byte for byte.
- App: `python app.py --model mini --threads 1` runs twice, with `--devices cpu` and with `--devices cpu,cpu` (one
  pipeline per device: the first in the app's process, the second in a worker process of its own, each with one
  torch thread), each a subprocess with OMP_NUM_THREADS=1. A `gradio_client` sends two /generate requests (two
  seeds): to the two-replica app one after the other (the second when the first has returned: the issue's
  baseline) and at once, and at once to the one-replica app (where the queue runs them one after the other, the
  second's round trip hidden behind the first's work), --repeats times interleaved, after one warm-up round; the
  wall time is from the first submission to the second result, median of the repeats; beside it the server's CPU
  time (its workers' included) over the same span divided by it (how many cores the app kept busy: up to 2 with
  two replicas on two idle cores). The images of all three are compared byte for byte. Rows go up in size to the
  app's largest (64 px, twice mini's).
- Threads: the same two requests without the app, on two `PACGenPipeline`s each on its own thread of one process
  (as the app's replicas were before each device had a process), against one after the other on one of them, at
  sizes past the app's: the per-request Python work (the sampler's loop, the UNet's module calls) holds the GIL both
  threads share, and the rows show from what size the two threads stop waiting on each other. Same one-thread
  torch, median of --repeats, images compared.
- Checkpoints: the state a `mini` training saves (its default method's trained weights as fp32 masters and AdamW's
  two moments, 12 bytes per trained weight) is written with `pacgen.checkpoints.write_state` --repeats times; the
  cost at the default interval is one save's time over `checkpoint_minutes`, and the optimisation step's time
  (`measure_step_seconds`) says how many steps that interval holds.

Run from the repository root: `python -m pacgen.mini.bench.scale` (about 7 minutes on 2 idle cores).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
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


class App:
    """`app.py` served from a subprocess on a free port, and a client of it."""

    def __init__(self, devices: str, home: Path):
        from gradio_client import Client

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
        self.log = (home / "server.log").open("w")
        self.process = subprocess.Popen([sys.executable, "app.py", "--model", "mini", "--threads", "1", "--devices",
                                         devices, "--data-dir", str(home), "--port", str(port)],
                                        cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while True:
            try:
                self.client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:  # noqa: BLE001 - not serving yet: any connection failure
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"app.py --devices {devices} did not start: {(home / 'server.log').read_text()}")
                time.sleep(1)

    def cpu_s(self) -> float:
        """The server's CPU time so far, all its threads and its devices' worker processes."""
        import psutil

        server = psutil.Process(self.process.pid)
        return sum(sum(p.cpu_times()[:2]) for p in [server, *server.children(recursive=True)])

    def two(self, size: int, steps: int, prompt: str, boxes: list, at_once: bool = True
            ) -> tuple[float, float, list[bytes]]:
        """Wall time of two requests (seeds 1 and 2) sent at once, or the second when the first has returned; the
        server's CPU time over it, and the images' pixels."""
        from PIL import Image

        table = {"headers": ["label", "x0", "y0", "x1", "y1"], "data": boxes}

        def submit(seed: int):
            return self.client.submit(prompt=prompt, boxes=table, num_inference_steps=steps, seed=seed, width=size,
                                      height=size, api_name="/generate")

        started, cpu = time.perf_counter(), self.cpu_s()
        if at_once:
            results = [job.result(timeout=3600) for job in [submit(seed) for seed in (1, 2)]]
        else:
            results = [submit(seed).result(timeout=3600) for seed in (1, 2)]
        wall, cpu = time.perf_counter() - started, self.cpu_s() - cpu
        return wall, cpu, [Image.open(gallery[0]["image"]).tobytes() for gallery, *_ in results]

    def close(self) -> None:
        self.client.close()
        self.process.terminate()
        self.process.wait(60)
        self.log.close()


def app_rows(cases: list[tuple[int, int]], work: Path, repeats: int, prompt: str, boxes: list) -> list[str]:
    rows = ["| model | size (px) | steps | 2 replicas: one after the other (s) | 2 replicas: at once (s) | ratio "
            "| 1 replica: at once (s) | 2 replicas against 1 | server CPU s / wall s, 1 / 2 replicas at once "
            "| same images |", "|---|---|---|---|---|---|---|---|---|---|"]
    (work / "one").mkdir()
    (work / "two").mkdir()
    one, two = App("cpu", work / "one"), App("cpu,cpu", work / "two")
    runs = {"alone": (one, True), "sequential": (two, False), "together": (two, True)}
    try:
        for size, steps in cases:
            times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
            images = {}
            for repeat in range(repeats + 1):  # the first round warms each app up at this size
                for name, (served, at_once) in runs.items():
                    wall, cpu, images[name] = served.two(size, steps, prompt, boxes, at_once)
                    if repeat:
                        times[name].append((wall, cpu))
            alone, sequential, together = (sorted(t)[len(t) // 2] for t in times.values())  # medians by wall time
            rows.append(f"| mini | {size} | {steps} | {sequential[0]:.2f} | {together[0]:.2f} "
                        f"| {together[0] / sequential[0]:.2f}x | {alone[0]:.2f} | {together[0] / alone[0]:.2f}x "
                        f"| {alone[1] / alone[0]:.2f} / {together[1] / together[0]:.2f} "
                        f"| {len(set(map(tuple, images.values()))) == 1} |")
            print(rows[-1], file=sys.stderr, flush=True)
    finally:
        one.close()
        two.close()
    return rows


def thread_rows(cases: list[tuple[int, int]], repeats: int, prompt: str, boxes: list) -> list[str]:
    from concurrent.futures import ThreadPoolExecutor

    from pacgen.layout import Box

    torch.set_num_threads(1)
    threads = [ThreadPoolExecutor(1) for _ in range(2)]
    pipes = [thread.submit(PACGenPipeline.from_pretrained, "mini", device="cpu").result() for thread in threads]
    placed = [Box(label, tuple(box)) for label, *box in boxes]

    def image(k: int, size: int, steps: int, seed: int) -> bytes:
        return threads[k].submit(lambda: pipes[k](prompt, boxes=placed, seed=seed, num_inference_steps=steps,
                                                  width=size, height=size).images[0].tobytes())

    rows = ["| model | size (px) | steps | one thread, one after the other (s) | two threads at once (s) | ratio "
            "| same images |", "|---|---|---|---|---|---|---|"]
    for size, steps in cases:
        alone, together = [], []
        for repeat in range(repeats + 1):  # the first round warms both pipelines up at this size
            started = time.perf_counter()
            one = [image(0, size, steps, seed).result() for seed in (1, 2)]
            middle = time.perf_counter()
            two = [job.result() for job in [image(k, size, steps, k + 1) for k in (0, 1)]]
            if repeat:
                alone.append(middle - started)
                together.append(time.perf_counter() - middle)
        first, second = sorted(alone)[len(alone) // 2], sorted(together)[len(together) // 2]
        rows.append(f"| mini | {size} | {steps} | {first:.2f} | {second:.2f} | {second / first:.2f}x | {one == two} |")
        print(rows[-1], file=sys.stderr, flush=True)
    for thread in threads:
        thread.shutdown()
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
    parser.add_argument("--tiny-images", type=int, default=96)
    parser.add_argument("--mini-images", type=int, default=32)
    parser.add_argument("--mini-steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--app-cases", default="32x10,32x25,32x50,64x20", metavar="SIZExSTEPS,…",
                        help="the app rows: image size and steps of each (the app allows up to 64 px on mini; "
                             "32x25 is its default)")
    parser.add_argument("--thread-cases", default="32x10,64x10,128x4,256x2", metavar="SIZExSTEPS,…",
                        help="the rows of two pipelines on two threads, without the app")
    parser.add_argument("--skip-batch", action="store_true", help="only the app and checkpoint rows")
    args = parser.parse_args(argv)
    prompt = "a red star and a blue circle on grass"
    boxes = [["a red star", 0.05, 0.1, 0.45, 0.5], ["a blue circle", 0.55, 0.5, 0.95, 0.9]]
    models = {"tiny": {"prompt": prompt, "boxes": boxes, "num_inference_steps": 10, "images": args.tiny_images},
              "mini": {"prompt": prompt, "boxes": boxes, "num_inference_steps": args.mini_steps,
                       "images": args.mini_images}}
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        rows = [] if args.skip_batch else batch_rows(models, work) + [""]
        cases = [tuple(int(n) for n in case.split("x")) for case in args.app_cases.split(",")]
        rows += app_rows(cases, work, args.repeats, prompt, boxes) + [""]
        cases = [tuple(int(n) for n in case.split("x")) for case in args.thread_cases.split(",")]
        rows += thread_rows(cases, args.repeats, prompt, boxes) + [""]
        rows += checkpoint_rows(work, args.repeats)
    print(f"{os.cpu_count()} CPUs, load average {load[0]:.1f} at the start and {os.getloadavg()[0]:.1f} at the end; "
          f"torch {torch.__version__}\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
