"""Regional sampling cost: plain GLIGEN generation vs regionally guided sampling with 1, 2 and 3 concepts.

Plain generation batches 2 UNet rows per step (unconditional + prompt); regional sampling with N
concepts batches N + 2 (unconditional, base, one per concept, each concept row through its own LoRA).
The target is a denoising time of at most 1.1 x (N + 2) / 2 times the plain one: no overhead beyond
the extra rows, bar 10%.

Every case uses the same model, size, steps, seed and scheduler. Concepts are random stand-in LoRAs
(`pacgen.mini.stand_ins.write_random_concept`), each with its own box and referenced in the prompt as <cK>.
"plain" runs on a pristine copy of the UNet that never had a LoRA; "plain + LoRAs" on the concepts'
UNet with all three loaded but switched off (as in the app, where the library's concepts stay loaded).
After one warm-up call of each UNet, the repeats run interleaved, so that load from other processes
hits every case alike; the table gives medians of the pipeline's own `denoise_s` (wall clock) and of
the process CPU time from the first UNet call to the last step (robust to preemption on a shared CPU).

    python -m pacgen.mini.bench.regional_speed --model tiny --steps 10 --repeats 3 --threads 1
    python -m pacgen.mini.bench.regional_speed --model sd14-random --size 256 --steps 4 --repeats 1 --threads 1
    python -m pacgen.mini.bench.regional_speed --model tiny --threads 1 --profile  # plus the profiler's top ops, N=3

A second table prices the concept detail pass (`detail_strength`, `pacgen.detail`; every case above runs without
it): one concept in a medium box, with the pass against without, in whole-request time (its VAE encode and decode
included); the target is at most 1.1 × the ratio of UNet rows run (`SampleSettings.row_steps`).

--model takes tiny, mini, a local diffusers folder, or sd14-random: SD-1.4 + GLIGEN sized, random weights.
On a CPU shared with other work, --threads 1 keeps OpenMP threads from waiting on each other.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from pacgen.layout import Box
from pacgen.mini.stand_ins import write_random_concept
from pacgen.sampling import PACGenPipeline
from pacgen.training import IDENTIFIER_CANDIDATES

MAX_CONCEPTS = 3
PLAIN_PROMPT = "a photo of a dog and a cat on grass"
PLAIN_BOXES = [Box("a dog", (0.05, 0.35, 0.45, 0.95)), Box("a cat", (0.55, 0.35, 0.95, 0.95))]
CONCEPT_BOXES = [(0.02, 0.35, 0.32, 0.95), (0.35, 0.35, 0.65, 0.95), (0.68, 0.35, 0.98, 0.95)]
DETAIL_BOX = (0.05, 0.1, 0.5, 0.6)  # medium, as the mini benchmark's two-object scenes: small enough to redraw


def load(model: str) -> PACGenPipeline:
    return PACGenPipeline.from_pretrained(model, device="cpu", dtype=torch.float32)


def regional_request(n: int) -> tuple[str, list[Box]]:
    refs = [f"<c{k + 1}>" for k in range(n)]
    return f"a photo of {' and '.join(refs)} on grass", [Box(ref, xyxy) for ref, xyxy in zip(refs, CONCEPT_BOXES)]


def timed(pipe: PACGenPipeline, prompt: str, boxes: list[Box], regional: bool, **settings) -> dict[str, float]:
    """The pipeline's timings plus `denoise_cpu_s`: process CPU time from the first UNet call to the last step."""
    marks: list[float] = []

    def first_unet_call(*_) -> None:
        if not marks:
            marks.append(time.process_time())

    hook = pipe.components.unet.register_forward_pre_hook(first_unet_call)
    try:
        result = pipe(prompt, boxes=boxes, regional=regional, callback=lambda *_: marks.append(time.process_time()),
                      **settings)
    finally:
        hook.remove()
    return {**result.timings, "denoise_cpu_s": marks[-1] - marks[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="tiny, mini, a diffusers folder, or sd14-random")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (default: the model's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--profile", action="store_true", help="also profile one 3-concept call (torch.profiler)")
    parser.add_argument("--detail", type=float, default=0.7, help="detail_strength of the detail-pass case")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    pipe = load(args.model)
    plain_pipe = PACGenPipeline(dataclasses.replace(pipe.components, unet=copy.deepcopy(pipe.components.unet)))
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # write_random_concept deletes its own scratch adapter; PEFT warns about that
        warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
        for k in range(MAX_CONCEPTS):
            folder = Path(tmp) / f"c{k + 1}"
            write_random_concept(pipe, folder, f"c{k + 1}", IDENTIFIER_CANDIDATES[k], seed=k + 1)
            pipe.load_concept(folder)

    size = args.size or pipe.components.default_size
    settings = {"num_inference_steps": args.steps, "seed": 0, "height": size, "width": size, "detail_strength": 0.0}
    cases = {"plain": (0, plain_pipe, PLAIN_PROMPT, PLAIN_BOXES, False),
             "plain + LoRAs": (0, pipe, PLAIN_PROMPT, PLAIN_BOXES, False)}
    cases.update({f"regional {n}": (n, pipe, *regional_request(n), True) for n in range(1, MAX_CONCEPTS + 1)})
    medium = [Box("<c1>", DETAIL_BOX)]
    detail_cases = {"medium box": ("a photo of <c1> on grass", medium, {}),
                    "medium box + detail pass": ("a photo of <c1> on grass", medium, {"detail_strength": args.detail})}

    def run(case: str) -> dict[str, float]:
        if case in detail_cases:
            prompt, boxes, changes = detail_cases[case]
            return timed(pipe, prompt, boxes, True, **{**settings, **changes})
        _, case_pipe, prompt, boxes, regional = cases[case]
        return timed(case_pipe, prompt, boxes, regional, **settings)

    run("plain")
    run(f"regional {MAX_CONCEPTS}")
    run("medium box + detail pass")
    timings: dict[str, list[dict[str, float]]] = {case: [] for case in [*cases, *detail_cases]}
    for _ in range(args.repeats):
        for case in timings:
            timings[case].append(run(case))

    def median(case: str, key: str) -> float:
        return statistics.median(t[key] for t in timings[case])

    plain, plain_cpu = median("plain", "denoise_s"), median("plain", "denoise_cpu_s")
    print(f"model {args.model}, {size}x{size}, {args.steps} steps ({pipe.settings().scheduler}), seed 0, "
          f"median of {args.repeats}, {args.threads} torch thread(s), torch {torch.__version__}\n")
    print("| mode | concepts | UNet rows/step | denoise s | denoise CPU s | total s | ratio vs plain | ratio (CPU) "
          "| target 1.1×(N+2)/2 | ok? (wall, CPU) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for case, (n, *_) in cases.items():
        ratio, ratio_cpu = median(case, "denoise_s") / plain, median(case, "denoise_cpu_s") / plain_cpu
        target = 1.1 * (n + 2) / 2
        verdict = ", ".join("yes" if r <= target else "NO" for r in (ratio, ratio_cpu))
        print(f"| {case} | {n} | {n + 2} | {median(case, 'denoise_s'):.3f} | {median(case, 'denoise_cpu_s'):.3f} "
              f"| {median(case, 'total_s'):.3f} | {ratio:.2f} | {ratio_cpu:.2f} | {target:.2f} | {verdict} |")

    sampled = pipe.settings(**settings)
    rows = {case: sampled.override(**changes).row_steps(boxes) for case, (_, boxes, changes) in detail_cases.items()}
    without = next(iter(detail_cases))
    print(f"\nThe detail pass at strength {args.detail:g}, one concept in the box {DETAIL_BOX}:\n")
    print("| case | UNet rows, all passes | total s | ratio | target 1.1 × rows ratio | ok? |")
    print("| --- | --- | --- | --- | --- | --- |")
    for case in detail_cases:
        ratio, target = median(case, "total_s") / median(without, "total_s"), 1.1 * rows[case] / rows[without]
        print(f"| {case} | {rows[case]} | {median(case, 'total_s'):.3f} | {ratio:.2f} | {target:.2f} "
              f"| {'yes' if ratio <= target else 'NO'} |")

    if args.profile:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run(f"regional {MAX_CONCEPTS}")
        print(f"\ntorch.profiler, one 'regional {MAX_CONCEPTS}' call, top ops by self CPU time:\n")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
