"""Memory of a `full` DreamBooth step on SD-1.4 + GLIGEN, and what a `full` concept weighs on disk.

    python -m pacgen.mini.bench.train_memory --threads 2 --out /tmp/train_memory.md

How it measures. Each configuration (image size, gradient checkpointing on or off) runs in its own subprocess, one
after the other, so that at most one ~15 GiB process is alive at a time. The child builds the SD-1.4-sized GLIGEN
UNet of `pacgen.mini.sd14_random` (random weights, fp32, CPU), makes the `full` layers trainable
(`pacgen.methods.method_modules(unet, "full")`: every weight matrix and conv kernel, never GLIGEN's fusers or
position net, no biases or norm weights), and trains them as `pacgen.training` does in fp32 (where the weights are
their own masters): `_optimizer` (torch AdamW), the masked loss on one instance row plus the prior loss on one
class row (batch 2), random (2, 77, 768) text embeddings, each row grounded with one box through GLIGEN's (frozen)
fusers, as `TrainSettings.grounded` trains. A warm-up step creates the AdamW state; gradients are then zeroed but
kept (`zero_grad(set_to_none=False)`), so the resident set holds weights + gradients + AdamW state. The measured
step resets the kernel's peak-RSS mark (`/proc/self/clear_refs`), runs forward and backward, and reads the peak
(`VmHWM`): activations = that peak - the RSS just before the step. The child runs with glibc's
`MALLOC_MMAP_THRESHOLD_` lowered, so freed tensors go back to the OS instead of staying resident in malloc's heap
(without it, the warm-up step's freed activations would already be counted in the baseline). Keeping the gradients
allocated counts them as if they all existed before backward, an upper bound on the project's loop, which frees
them after each step.

Weights, gradients and optimizer state are computed from parameter counts and dtypes; the child's RSS
before the step (those plus the imported libraries) checks them. Activations are measured on the CPU in
fp32, at --target px itself where it is among the sizes (checkpointed, by default; fp32 CPU training at
512 px fits this way in ~15 GiB), else extrapolated linearly in the latent area, a + b * area through the
two largest sizes below the target: at small sizes the peak is set by backward's temporaries that do not
grow with the area (per-kernel gradient buffers: the largest 3x3 kernel's is 118 MB), so small sizes alone
understate the slope (before grounded training, through 128 and 256 px the fit gave 0.57 GiB at 512 px;
measured: 0.90 GiB).
SDPA runs as flash attention on both CPU and GPU, so nothing in it grows with the square of the area. On
the GPU, bf16 autocast keeps most activations in 2 bytes, so the fp32 figure is an upper bound there. Text
encoder (CLIP ViT-L/14) and VAE sizes are counted from SD-1.4's published configs (built on the meta device
/ by `build_sd14_random`). On-disk concept sizes are computed from the shapes of the `full` layers: a
rank-r LoRA of an (out, fan_in) layer (fan_in = in * kh * kw for a conv) stores r * (fan_in + out) values,
with r capped at min(out, fan_in) as `pacgen.lora.extract_lora` does, in fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

GIB = 2**30
MIB = 2**20
MMAP_THRESHOLD = 16384  # bytes: tensors above this get their own mapping, which free() gives back to the OS
SD14_TEXT_ENCODER = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                     "num_attention_heads": 12, "max_position_embeddings": 77, "projection_dim": 768}
PHASES = ("fb", "step", "both")  # forward+backward, gradient copy + optimizer step, or throughout
CUDA_CONTEXT_GIB = 0.5  # CUDA context, cuBLAS/cuDNN workspaces: a typical figure, not measured here


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # "5": reset the peak resident set size to the current one


def measure(size: int, checkpointing: bool) -> dict:
    """One configuration, in this process: parameter counts, layer shapes, and the measured step's memory."""
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    from pacgen.grounding import gligen
    from pacgen.grounding.gligen import is_adapter_key
    from pacgen.methods import method_modules
    from pacgen.mini.sd14_random import build_sd14_random
    from pacgen.bases import sd1
    from pacgen.settings import TrainSettings
    from pacgen.training import _optimizer, masked_mse

    components = build_sd14_random()
    unet = components.unet
    vae_params = sum(p.numel() for p in components.vae.parameters())
    del components  # the VAE and the toy text encoder go; only the UNet trains
    layers = method_modules(unet, "full")
    params = [layer.weight for layer in layers.values()]
    for param in params:
        param.requires_grad_(True)
    named = dict(unet.named_parameters())

    torch.manual_seed(0)
    side = size // 8
    latents = torch.randn(2, 4, side, side)  # row 0: an instance image, row 1: a class image
    text = torch.randn(2, 77, 768)
    mask = torch.ones(1, 1, side, side)
    grounding = gligen.box_per_row(torch.tensor([[0.2, 0.2, 0.8, 0.8]] * 2), torch.randn(768))  # as training does
    scheduler = DDPMScheduler.from_config(sd1.SCHEDULER_CONFIG)
    optimizer = _optimizer(params, TrainSettings(method="full"))  # fp32 here: the weights are their own masters
    if checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()

    def forward_backward() -> None:
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (2,))
        noisy = scheduler.add_noise(latents, noise, timesteps)
        prediction = unet(noisy, timesteps, encoder_hidden_states=text, cross_attention_kwargs=grounding).sample
        loss = masked_mse(prediction[:1], noise[:1], mask) + F.mse_loss(prediction[1:], noise[1:])
        loss.backward()

    def optimizer_step() -> None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)  # keep the gradient buffers: the baseline then holds them

    forward_backward()
    optimizer_step()
    baseline = _rss_kib("VmRSS")
    _reset_peak_rss()
    started = time.perf_counter()
    forward_backward()
    backward_peak = _rss_kib("VmHWM")
    optimizer_step()
    step_s = time.perf_counter() - started
    return {
        "size": size, "latent": side, "checkpointing": checkpointing, "threads": torch.get_num_threads(),
        "unet_params": sum(p.numel() for p in named.values()),
        "trained_params": sum(p.numel() for p in params),
        "gligen_params": sum(p.numel() for n, p in named.items() if is_adapter_key(n)),
        "gligen_trained": sum(p.numel() for n, p in named.items() if is_adapter_key(n) and p.requires_grad),
        "linear_layers": sum(isinstance(layer, torch.nn.Linear) for layer in layers.values()),
        "conv_layers": sum(isinstance(layer, torch.nn.Conv2d) for layer in layers.values()),
        "vae_params": vae_params,
        "shapes": [[layer.weight.shape[0], layer.weight[0].numel()] for layer in layers.values()],
        "baseline_bytes": baseline * 1024, "backward_peak_bytes": backward_peak * 1024,
        "step_peak_bytes": _rss_kib("VmHWM") * 1024, "activation_bytes": (backward_peak - baseline) * 1024,
        "step_s": step_s,
    }


def run_child(size: int, checkpointing: bool, threads: int) -> dict:
    command = [sys.executable, "-m", "pacgen.mini.bench.train_memory", "--child", "--size", str(size),
               "--threads", str(threads)] + (["--checkpointing"] if checkpointing else [])
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "OMP_NUM_THREADS": str(threads)}
    print(f"measuring {size} px, checkpointing {'on' if checkpointing else 'off'} ...", file=sys.stderr, flush=True)
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def text_encoder_params() -> int:
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        return sum(p.numel() for p in CLIPTextModel(CLIPTextConfig(**SD14_TEXT_ENCODER)).parameters())


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """(a, b) of activations = a + b * latent area: least squares, or proportional through a single point."""
    if len(points) == 1:
        area, value = points[0]
        return 0.0, value / area
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    b = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x, _ in points)
    return mean_y - b * mean_x, b


def lora_params(shapes: list[list[int]], rank: int) -> int:
    return sum(min(rank, out, fan_in) * (fan_in + out) for out, fan_in in shapes)


def gib(n: float) -> str:
    return f"{n / GIB:.2f}"


def activations_at(results: list[dict], checkpointing: bool, target: int) -> tuple[float, str, str] | None:
    """One mode's activations at `target` px: (bytes, source label, a line saying how they were obtained).

    Measured if `target` was; else extrapolated, linear in the latent area, through the two largest sizes below
    it (at small sizes backward's temporaries, which do not grow with the area, set the peak).
    """
    measured = {r["size"]: r["activation_bytes"] for r in results if r["checkpointing"] == checkpointing}
    if not measured:
        return None
    name = f"checkpointing {'on' if checkpointing else 'off'}"
    below = sorted(size for size in measured if size < target)[-2:]
    sizes = " and ".join(map(str, below))
    notes = []
    if below:
        a, b = fit([((size // 8) ** 2, measured[size]) for size in below])
        extrapolated = a + b * (target // 8) ** 2
        notes.append(f"{a / MIB:.0f} MiB + {b / MIB:.3f} MiB x latent area through {sizes} px gives "
                     f"{gib(extrapolated)} GiB")
    if target in measured:
        notes.append(f"measured: **{gib(measured[target])} GiB**")
        return measured[target], f"measured (CPU fp32, {target} px)", f"- {name}: " + "; ".join(notes)
    return extrapolated, f"estimated (linear in area through {sizes} px)", f"- {name}: {notes[0]} (**estimated**)"


def report(results: list[dict], target: int, gpu_gib: float, ranks: list[int]) -> str:
    first = results[0]
    n_unet, n_trained, n_gligen = first["unet_params"], first["trained_params"], first["gligen_params"]
    n_text, n_vae = text_encoder_params(), first["vae_params"]
    lines = [
        (f"UNet (SD-1.4 + GLIGEN, random weights): {n_unet:,} parameters; `full` trains {n_trained:,} "
         f"({first['linear_layers']} Linear weights, {first['conv_layers']} Conv2d kernels); frozen "
         f"{n_unet - n_trained:,}: GLIGEN fusers + position net {n_gligen:,} (trained: {first['gligen_trained']}), "
         f"biases and norm weights {n_unet - n_trained - n_gligen:,}."),
        "",
        f"### Measured on the CPU (fp32, batch 2, {first['threads']} threads)",
        "",
        ("| checkpointing | image px | latent | RSS before step GiB | computed weights+grads+AdamW GiB "
         "| peak RSS fwd+bwd GiB | peak RSS whole step GiB | activations GiB (measured) | step s |"),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    static_cpu = 4 * n_unet + 4 * n_trained + 8 * n_trained
    lines += [f"| {'on' if r['checkpointing'] else 'off'} | {r['size']} | {r['latent']}x{r['latent']} "
              f"| {gib(r['baseline_bytes'])} | {gib(static_cpu)} | {gib(r['backward_peak_bytes'])} "
              f"| {gib(r['step_peak_bytes'])} | {gib(r['activation_bytes'])} | {r['step_s']:.1f} |" for r in results]
    checkpointed = activations_at(results, True, target)
    plain = activations_at(results, False, target)
    lines += ["", f"Activations at {target} px ({target // 8}x{target // 8} latents), batch 2, fp32:", ""]
    lines += [found[2] for found in (checkpointed, plain) if found]

    rows = [  # (part, bytes with fp32 AdamW, bytes with 8-bit Adam, phase (one of PHASES), source)
        (f"UNet weights, bf16 (all {n_unet / 1e6:.0f}M params)", 2 * n_unet, 2 * n_unet, "both", "computed"),
        (f"fp32 master copies of the {n_trained / 1e6:.0f}M trained weights", 4 * n_trained, 4 * n_trained, "both",
         "computed"),
        ("bf16 gradients on the live weights (backward)", 2 * n_trained, 2 * n_trained, "fb", "computed"),
        ("fp32 master gradients (`_MasterWeights.step` copies them)", 4 * n_trained, 4 * n_trained, "step", "computed"),
        ("optimizer state: AdamW fp32 8 B/param, 8-bit Adam 2 B/param", 8 * n_trained, 2 * n_trained, "both",
         "computed"),
        ("optimizer step buffer: torch AdamW on CUDA (foreach) allocates sqrt(v), 4 B/param; bitsandbytes: none",
         4 * n_trained, 0, "step", "computed"),
        (f"activations, gradient checkpointing, {target} px batch 2", checkpointed[0], checkpointed[0], "fb",
         checkpointed[1]),
        (f"text encoder, CLIP ViT-L/14, bf16 ({n_text / 1e6:.1f}M params)", 2 * n_text, 2 * n_text, "both",
         "computed (published config)"),
        (f"VAE, bf16 ({n_vae / 1e6:.1f}M params)", 2 * n_vae, 2 * n_vae, "both", "computed (published config)"),
        ("CUDA context and library workspaces", CUDA_CONTEXT_GIB * GIB, CUDA_CONTEXT_GIB * GIB, "both",
         "estimated (typical, not measured)"),
    ]
    lines += ["", f"### GPU recipe at {target} px, batch 2 (bf16 weights, fp32 masters, gradient checkpointing)", "",
              "| part | fp32 AdamW GiB | 8-bit Adam GiB | source |", "| --- | --- | --- | --- |"]
    lines += [f"| {part} | {gib(fp32)} | {gib(int8)} | {source} |" for part, fp32, int8, _, source in rows]

    def total(column: int, phases: tuple[str, ...]) -> float:
        return sum(row[column] for row in rows if row[3] in phases)

    def verdict(n: float) -> str:
        return f"**{gib(n)}** ({'fits' if n <= gpu_gib * GIB else 'does NOT fit'} {gpu_gib:g} GiB)"

    fb, step = total(1, ("fb", "both")), total(1, ("step", "both"))
    fb8, step8 = total(2, ("fb", "both")), total(2, ("step", "both"))
    lines.append(f"| total, every part at once (upper bound) | {verdict(total(1, PHASES))} "
                 f"| {verdict(total(2, PHASES))} | sum |")
    lines.append(f"| peak of the two phases: fwd+bwd {gib(fb)} / {gib(fb8)}, gradient copy + optimizer step "
                 f"{gib(step)} / {gib(step8)} | {verdict(max(fb, step))} | {verdict(max(fb8, step8))} "
                 "| sum per phase |")
    if plain:
        lines += ["", (f"Without checkpointing, activations at {target} px take {gib(plain[0])} GiB, {plain[1]}, "
                       "instead of the checkpointed row's.")]

    dense = 4 * n_trained
    lines += ["", "### A stored `full` concept (fp32 safetensors, tensor data)", "",
              "| stored as | parameters | MiB | vs dense delta |", "| --- | --- | --- | --- |"]
    for rank in ranks:
        n = lora_params(first["shapes"], rank)
        lines.append(f"| LoRA rank {rank} | {n:,} | {4 * n / MIB:.1f} | {4 * n / dense:.2%} |")
    lines.append(f"| dense delta (every trained weight) | {n_trained:,} | {dense / MIB:.1f} | 100% |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs="+", default=[64, 128, 256, 512],
                        help="training image sizes in px to measure, each in its own subprocess (multiples of 8)")
    parser.add_argument("--plain-up-to", type=int, default=256,
                        help="measure without checkpointing only up to this size (the CPU process holds 13.6 GiB "
                             "of fp32 weights, gradients and AdamW state before any activation)")
    parser.add_argument("--checkpointing", action="store_true",
                        help="only with gradient checkpointing (with --child: measure with it)")
    parser.add_argument("--target", type=int, default=512, help="image size to extrapolate the GPU recipe to")
    parser.add_argument("--gpu-gib", type=float, default=24.0, help="GPU memory to compare the totals with")
    parser.add_argument("--ranks", type=int, nargs="+", default=[4, 16, 32, 64, 128])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of each measuring process")
    parser.add_argument("--out", help="also write the markdown report to this file")
    parser.add_argument("--child", action="store_true",
                        help="measure one configuration (the first --size) in this process and print it as JSON")
    args = parser.parse_args()
    if any(size % 8 for size in args.size):
        parser.error("--size: image sizes must be multiples of 8")
    if min(args.size) > args.target:
        parser.error("--size: measure the --target size or smaller ones, to extrapolate from")
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(measure(args.size[0], args.checkpointing)))
        return

    started = time.perf_counter()
    results = [run_child(size, True, args.threads) for size in args.size]
    if not args.checkpointing:
        results += [run_child(size, False, args.threads) for size in args.size if size <= args.plain_up_to]
    text = report(results, args.target, args.gpu_gib, args.ranks)
    text += f"\n({len(results)} measuring processes, {time.perf_counter() - started:.0f} s in all.)\n"
    print(text)
    if args.out:
        with open(args.out, "w") as out:
            out.write(text)


if __name__ == "__main__":
    main()
