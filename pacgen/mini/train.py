r"""Train the embedded `mini` model from scratch on the procedural toy world.

    python -m pacgen.mini.train --out assets/mini --work /tmp/mini-work --minutes-vae 10 --minutes-unet 80 \
        --zero-snr --minutes-tune 30 --tune-lr 5e-4 --scenes 50000 --threads 2 --seed 0

On a GPU add `--device cuda --threads 16` and a large batch (a step costs about the same at 512 as at 2048):
assets/mini/TRAINING.md records the two runs that made the shipped model.

Stages: render a fixed set of scenes; train a VAE (f=2: 32x32 images, 16x16 latents); encode the scenes
once; train the UNet (GLIGEN fusers included) jointly with a small text encoder; optionally (`--minutes-tune`)
go on at a lower rate with half the captions in the "a photo of ..." template that people's prompts and
DreamBooth's instance prompts use; optionally (`--minutes-decoder`) train the VAE's decoder alone on the scenes
and on scenes holding a random kit-like object (two-colour checks, rings, bands the world never paints): the
encoder is frozen, so the latents, the UNet and every concept trained on the model stay valid, while the decoder
learns to draw the patterns people's objects have, as SD's VAE draws any photo. Each stage's step count is fixed
from its time budget after 20 timed steps, checkpointed to --work (--resume continues, also into a stage added
later) and recorded, so `--vae-steps/--unet-steps/--tune-steps/--decoder-steps` reproduce a run exactly.
`--init` starts from a saved mini model instead of fresh weights, to go on training a model made elsewhere (a short
GPU run, say), also at another `--size` (the 64 px mini from the 32 px one). The model is written in fp16.
`--zero-snr` trains the UNet stages for a zero-terminal-SNR schedule with v-prediction, which mini's scheduler
config then records.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import multiprocessing
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from pacgen.grounding.gligen import ATTENTION_TYPE, MAX_BOXES, set_gates
from pacgen.bases import sd1
from pacgen.defaults import ModelDefaults, read_defaults
from pacgen.mini.tiny import build_toy_tokenizer, toy_text_encoder
from pacgen.mini.kit import random_concept
from pacgen.mini.world import BACKGROUNDS, PlacedObject, caption, random_box, random_spec, render, sample_scene
from pacgen.models import MINI_DIR, Components, ModelLoadError, load_components
from pacgen.training import training_target

KL_WEIGHT = 1e-6  # just enough to keep latents bounded; the VAE is a near-autoencoder as in SD
CAPTION_DROP = 0.1  # rows trained with the empty prompt, for classifier-free guidance
GROUNDED = 0.8  # rows with fusers on that see their boxes; the others get null grounding tokens (masks 0)
FUSERS_OFF = 0.25  # rows without the `gligen` kwarg, as sampling after `grounding_fraction` and LoRA training run
# v1 trained every grounding phrase with its colour and every caption naming every object: the caption alone
# told the UNet what to draw, so the fusers learnt almost nothing and the bare class noun a concept is grounded
# with ("star") placed nothing. These make the grounding tokens carry information the caption does not.
NOUN_PHRASE = 0.3  # objects grounded with their shape noun only, as concepts are ("star", not "a red star")
BOX_ONLY_CAPTION = 0.3  # grounded rows whose caption names only the background: what and where come from boxes
COLOUR_JITTER = 0.5  # VAE rows recoloured at random, so kit colours the world never paints (cream, teal) survive
# The world's captions never say "a photo of", which every DreamBooth instance prompt and most user prompts
# start with: the tune stage writes that many of its full captions in that template.
PHOTO_PREFIX = 0.5
# With --zero-snr the last steps start from pure noise, where only the boxes can say where things go: that is
# where box following is learnt, so half the rows are drawn from t >= LATE_T, with half their captions box-only.
LATE_T, LATE_SHARE, LATE_BOX_ONLY = 700, 0.5, 0.5
LR_FLOOR = 0.05  # cosine decay ends at 5% of the peak: the loss plateaus at a constant rate
STAGE_SEEDS = {"vae": 0, "unet": 1, "tune": 2, "decoder": 3}  # each stage draws its own batches
TIMING_STEPS = 20  # steps timed before the budget in minutes is turned into a fixed step count
MAX_MB = 40
PATTERN_STREAM = 7  # the decoder stage's scenes: a random stream apart from the world scenes'


@dataclass
class Config:
    out: Path
    work: Path
    minutes_vae: float
    minutes_unet: float
    vae_steps: int | None  # when given, replaces the budget in minutes: exact reproduction
    unet_steps: int | None
    minutes_tune: float
    tune_steps: int | None
    minutes_decoder: float
    decoder_steps: int | None
    seed: int
    size: int
    scenes: int
    batch: int
    lr: float
    tune_lr: float
    vae_lr: float
    decoder_lr: float
    warmup: int
    text_hidden: int
    zero_snr: bool
    init: Path | None
    threads: int
    device: str
    resume: bool
    checkpoint_minutes: float
    log_seconds: float


def parse_args(argv: list[str] | None) -> Config:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="model folder to write (assets/mini)")
    p.add_argument("--work", type=Path, required=True, help="scene cache and checkpoints")
    p.add_argument("--minutes-vae", type=float, default=8.0)
    p.add_argument("--minutes-unet", type=float, default=60.0)
    p.add_argument("--vae-steps", type=int, help="fixed step count instead of --minutes-vae")
    p.add_argument("--unet-steps", type=int, help="fixed step count instead of --minutes-unet")
    p.add_argument("--minutes-tune", type=float, default=0.0,
                   help='then go on at --tune-lr with half the captions as "a photo of <caption>"')
    p.add_argument("--tune-steps", type=int, help="fixed step count instead of --minutes-tune")
    p.add_argument("--minutes-decoder", type=float, default=0.0,
                   help="then train the VAE's decoder alone (encoder frozen) on the scenes and on scenes with a "
                        "random kit-like object, at --decoder-lr")
    p.add_argument("--decoder-steps", type=int, help="fixed step count instead of --minutes-decoder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=32, help="image side in pixels, a multiple of 8")
    p.add_argument("--scenes", type=int, default=40_000, help="size of the fixed training set")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of the UNet stage")
    p.add_argument("--tune-lr", type=float, default=3e-4, help="peak learning rate of the tune stage")
    p.add_argument("--vae-lr", type=float, default=2e-3, help="peak learning rate of the VAE stage")
    p.add_argument("--decoder-lr", type=float, default=3e-4, help="peak learning rate of the decoder stage")
    p.add_argument("--warmup", type=int, default=100, help="steps of linear learning-rate warmup")
    p.add_argument("--text-hidden", type=int, default=96, help="text encoder width = cross-attention width")
    p.add_argument("--zero-snr", action="store_true",
                   help="UNet stages use a zero-terminal-SNR schedule with v-prediction (see docs/mini_quality.md)")
    p.add_argument("--init", type=Path, help="start from this saved mini model folder's weights ('mini': the shipped "
                   "one) instead of fresh ones; its architecture and noise schedule, so --text-hidden is ignored")
    p.add_argument("--threads", type=int, default=2, help="torch threads, and scene-rendering processes")
    p.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast on cuda)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in --work")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument("--log-seconds", type=float, default=30.0)
    cfg = Config(**vars(p.parse_args(argv)))
    if cfg.init == Path("mini"):
        cfg.init = MINI_DIR
    if cfg.size % 8 or cfg.batch < 4:
        p.error("--size must be a multiple of 8 and --batch at least 4")
    return cfg


def autocast(device: torch.device) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def render_one(job: tuple[int, int, int]) -> tuple[np.ndarray, str, str, list]:
    seed, index, size = job
    scene = sample_scene(np.random.default_rng([seed, index]), size=size)
    return (np.asarray(scene.image), scene.caption, caption(scene.background, []).strip(),
            [(o.box, o.spec.phrase, o.spec.shape) for o in scene.objects])


def render_pattern_one(job: tuple[int, int, int]) -> np.ndarray:
    """A world scene holding a random kit-like object (and half the time a world object), for the decoder stage;
    drawn from (seed, index) on a random stream of its own, apart from the benchmark's `--new` draws."""
    seed, index, size = job
    rng = np.random.default_rng([seed, index, PATTERN_STREAM])
    objects = [PlacedObject(random_concept(rng), random_box(rng, 0.2, 0.8))]
    if rng.random() < 0.5:
        objects.insert(int(rng.integers(2)), PlacedObject(random_spec(rng), random_box(rng, 0.2, 0.6)))
    return np.asarray(render(BACKGROUNDS[rng.integers(len(BACKGROUNDS))], objects, size, rng)[0])


def render_pattern_scenes(cfg: Config) -> torch.Tensor:
    """As many pattern scenes as world scenes, uint8 (N, H, W, 3), cached beside them."""
    path = cfg.work / f"pattern-scenes-seed{cfg.seed}-n{cfg.scenes}-{cfg.size}px.pt"
    if path.exists():
        return torch.load(path)
    images = torch.from_numpy(np.stack(render_all(render_pattern_one, cfg)))
    torch.save(images, path)
    log(f"[scenes] rendered {cfg.scenes} pattern scenes -> {path}")
    return images


def render_all(draw: Callable[[tuple[int, int, int]], object], cfg: Config) -> list:
    """`draw` on every (seed, index, size) of the run, in --threads processes: scene i depends only on i."""
    jobs = [(cfg.seed, i, cfg.size) for i in range(cfg.scenes)]
    if cfg.threads == 1:
        return [draw(job) for job in jobs]
    with multiprocessing.Pool(cfg.threads) as pool:
        return pool.map(draw, jobs, chunksize=256)


def scenes_path(cfg: Config) -> Path:
    return cfg.work / f"scenes-v2-seed{cfg.seed}-n{cfg.scenes}-{cfg.size}px.pt"


def render_scenes(cfg: Config, tokenizer: CLIPTokenizer) -> dict:
    """The fixed training set, tokenized; scene i depends only on (seed, i), whatever the process count."""
    path = scenes_path(cfg)
    if path.exists():
        return torch.load(path, weights_only=False)
    started = time.perf_counter()
    log(f"[scenes] rendering {cfg.scenes} scenes with {cfg.threads} processes")
    images, captions, settings, objects = zip(*render_all(render_one, cfg), strict=True)
    phrases = sorted({text for objs in objects for _, phrase, noun in objs for text in (phrase, noun)})
    slots = max(len(objs) for objs in objects)
    boxes, obj_phrase = torch.zeros(len(objects), slots, 4), torch.full((len(objects), slots), -1)
    obj_noun = obj_phrase.clone()
    for i, objs in enumerate(objects):
        for j, (box, phrase, noun) in enumerate(objs):
            boxes[i, j] = torch.tensor(box)
            obj_phrase[i, j], obj_noun[i, j] = phrases.index(phrase), phrases.index(noun)
    tokens = tokenizer(list(phrases), padding=True, return_tensors="pt")  # as PACGenPipeline.encode_phrases
    data = {
        "images": torch.from_numpy(np.stack(images)),
        "captions": list(captions),
        "caption_ids": tokenize_prompts(tokenizer, list(captions)),
        "setting_ids": tokenize_prompts(tokenizer, list(settings)),  # the caption without its objects
        "boxes": boxes,
        "obj_phrase": obj_phrase,  # index into phrases, -1 for an empty slot
        "obj_noun": obj_noun,  # the same objects' shape nouns
        "phrases": phrases,
        "phrase_ids": tokens.input_ids,
        "phrase_mask": tokens.attention_mask,
    }
    torch.save(data, path)
    log(f"[scenes] rendered {cfg.scenes} in {time.perf_counter() - started:.0f}s -> {path}")
    return data


def tokenize_prompts(tokenizer: CLIPTokenizer, texts: list[str]) -> torch.Tensor:
    """Padded to 77 tokens like PACGenPipeline.encode_prompts, so the UNet sees the same padding it will get."""
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def build_models(cfg: Config, tokenizer: CLIPTokenizer) -> tuple[AutoencoderKL, CLIPTextModel, UNet2DConditionModel]:
    """Attention only at 8x8 and 4x4 latents: at 16x16 it took 37% of a training step in the sizing runs."""
    torch.manual_seed(cfg.seed)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64), layers_per_block=1, latent_channels=4, norm_num_groups=16, sample_size=cfg.size,
        mid_block_add_attention=False,  # 12% of the VAE's training step
    )
    text_encoder = toy_text_encoder(tokenizer, hidden=cfg.text_hidden, layers=2, heads=4)
    unet = UNet2DConditionModel(
        sample_size=cfg.size // 2, block_out_channels=(64, 96, 128), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 3, 4),  # diffusers' name for the head count: 32 channels per head
        cross_attention_dim=cfg.text_hidden, norm_num_groups=16, attention_type=ATTENTION_TYPE,
    )
    set_gates(unet, 1.0)  # closed gates pass no gradient into freshly initialised fusers
    return vae, text_encoder, unet


def start_models(cfg: Config, tokenizer: CLIPTokenizer) -> tuple[AutoencoderKL, CLIPTextModel, UNet2DConditionModel]:
    """Fresh weights, or with --init a saved model's, which must share the toy vocabulary and this run's schedule."""
    if cfg.init is None:
        return build_models(cfg, tokenizer)
    if not cfg.init.is_dir():  # a folder only: a missing one must not be looked up on the Hub
        raise SystemExit(f"--init {cfg.init}: not a saved mini model (no such folder)")
    try:
        start = load_components(str(cfg.init), device="cpu", dtype=torch.float32)
    except ModelLoadError as error:
        raise SystemExit(f"--init {cfg.init}: not a saved mini model ({error})") from error
    if start.tokenizer.get_vocab() != tokenizer.get_vocab():
        raise SystemExit(f"--init {cfg.init}: its tokenizer is not the toy world's, so the captions would not match")
    kind, wanted = (c.get("prediction_type", "epsilon") for c in (start.scheduler_config, scheduler_config(cfg)))
    if kind != wanted:
        flag = "with" if kind == "v_prediction" else "without"
        raise SystemExit(f"--init {cfg.init} predicts {kind}, this run trains {wanted}: run {flag} --zero-snr")
    if start.default_size != cfg.size:  # both are convolutional: they go on at the new size (a 64 px mini)
        start.unet.register_to_config(sample_size=cfg.size // start.vae_scale_factor)
        start.vae.register_to_config(sample_size=cfg.size)
    for module in (start.vae, start.text_encoder, start.unet):
        module.requires_grad_(True)
    return start.vae, start.text_encoder, start.unet


def learning_rate(peak: float, warmup: int, step: int, total: int | None) -> float:
    """The lesser of a linear warmup and a cosine decay to LR_FLOOR.

    `total` is still unknown (None) during the timed first steps, where (default warmup) the warmup is the
    lesser anyway: so a timed run and its replay with a fixed step count follow the same schedule.
    """
    cosine = 1.0 if total is None else LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * step / total))
    return peak * min((step + 1) / warmup, cosine)


def train_stage(name: str, modules: dict[str, torch.nn.Module], loss_fn: Callable[[torch.Generator], torch.Tensor],
                cfg: Config, peak_lr: float, minutes: float, steps: int | None) -> dict:
    """Optimise `loss_fn` for the stage's step budget, checkpointing every few minutes; returns its state."""
    path = cfg.work / f"{name}.pt"
    params = [p for module in modules.values() for p in module.parameters()]
    opt = torch.optim.AdamW(params, lr=peak_lr)
    gen = torch.Generator().manual_seed(cfg.seed * 2 + STAGE_SEEDS[name])
    state = {"step": 0, "total": steps, "loss": float("nan"), "seconds": 0.0}
    if cfg.resume and path.exists():
        checkpoint = torch.load(path, weights_only=False)
        if checkpoint["scenes"] != str(scenes_path(cfg)):
            raise SystemExit(f"{path} was trained on {checkpoint['scenes']}: resume with its --seed/--scenes/--size")
        for key, module in modules.items():
            module.load_state_dict(checkpoint["modules"][key])
        opt.load_state_dict(checkpoint["opt"])
        gen.set_state(checkpoint["gen"])
        state = checkpoint["state"]
        if steps is not None:  # an explicit budget wins on resume: it can also end a long run early
            state["total"] = steps
        log(f"[{name}] resumed at step {state['step']}/{state['total'] or '?'}")

    def save() -> None:
        checkpoint = {"modules": {k: m.state_dict() for k, m in modules.items()}, "opt": opt.state_dict(),
                      "gen": gen.get_state(), "state": state, "scenes": str(scenes_path(cfg)), "config": vars(cfg)}
        torch.save(checkpoint, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)  # a kill while saving never leaves a broken checkpoint

    for module in modules.values():
        module.train()
    first_step, tick = state["step"], time.monotonic()
    last_log = last_save = tick
    window_step, timed_from = first_step, state["seconds"]
    while True:
        step = state["step"]
        if state["total"] is None and step - first_step == TIMING_STEPS:
            step_s = (state["seconds"] - timed_from) / (TIMING_STEPS - 2)
            state["total"] = step + max(0, int((minutes * 60 - state["seconds"]) / step_s))
            log(f"[{name}] {step_s:.2f} s/step: {minutes} min -> {state['total']} steps")
        elif step - first_step == 2:  # the first steps are slow (allocations): not timed
            timed_from = state["seconds"]
        if state["total"] is not None and step >= state["total"]:
            break
        lr = learning_rate(peak_lr, cfg.warmup, step, state["total"])
        for group in opt.param_groups:
            group["lr"] = lr
        loss = loss_fn(gen)
        if not torch.isfinite(loss):
            raise RuntimeError(f"[{name}] loss is {loss.item()} at step {step}; lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        value = loss.item()
        state["loss"] = value if math.isnan(state["loss"]) else 0.98 * state["loss"] + 0.02 * value
        state["step"] += 1
        now = time.monotonic()
        state["seconds"] += now - tick
        tick = now
        if now - last_log >= cfg.log_seconds or state["step"] == state["total"]:
            rate = (state["step"] - window_step) / (now - last_log)
            eta = f"{(state['total'] - state['step']) / rate / 60:.1f} min" if state["total"] else "?"
            log(f"[{name}] step {state['step']}/{state['total'] or '?'} loss {state['loss']:.4f} lr {lr:.2e} "
                f"{rate * cfg.batch:.1f} img/s ETA {eta}")
            last_log, window_step = now, state["step"]
        if now - last_save >= cfg.checkpoint_minutes * 60:
            save()
            last_save = time.monotonic()
    save()
    for module in modules.values():
        module.eval()
    return state


def recolour(x: torch.Tensor, gen: torch.Generator, share: float = COLOUR_JITTER) -> torch.Tensor:
    """A random channel permutation, gain and offset for `share` of the rows of a [-1, 1] batch."""
    rows = torch.rand(len(x), generator=gen) < share
    perm = torch.argsort(torch.rand(len(x), 3, generator=gen), dim=1)
    gain = torch.empty(len(x), 3, 1, 1).uniform_(0.5, 1.2, generator=gen)
    offset = torch.empty(len(x), 3, 1, 1).uniform_(-0.4, 0.4, generator=gen)
    shuffled = torch.gather(x, 1, perm[:, :, None, None].expand_as(x))
    jittered = (shuffled * gain + offset).clamp(-1, 1)
    return torch.where(rows[:, None, None, None], jittered, x)


def rows_from(*pools: tuple[torch.Tensor, int]) -> Callable[[torch.Generator], torch.Tensor]:
    """A batch of `n` rows drawn at random from each `(pool, n)`, in order."""
    return lambda gen: torch.cat([pool[torch.randint(len(pool), (n,), generator=gen)] for pool, n in pools])


def vae_loss(vae: AutoencoderKL, batch: Callable[[torch.Generator], torch.Tensor], device: torch.device) -> Callable:
    """The round trip's L1 + MSE (and a touch of KL) on `batch(gen)`, some rows recoloured. The decoder stage uses it
    with the encoder's weights frozen: no gradient reaches them, so the same loss trains the decoder alone."""
    def loss(gen: torch.Generator) -> torch.Tensor:
        x = recolour(to_pixels(batch(gen)), gen).to(device)
        with autocast(device):
            posterior = vae.encode(x).latent_dist
            z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen).to(device)
            recon = vae.decode(z).sample.float()
        return F.l1_loss(recon, x) + F.mse_loss(recon, x) + KL_WEIGHT * posterior.kl().mean()
    return loss


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1], the VAE's range."""
    return images.permute(0, 3, 1, 2).float() / 127.5 - 1


@torch.no_grad()
def encode_scenes(vae: AutoencoderKL, images: torch.Tensor, device: torch.device, rescale: bool) -> torch.Tensor:
    """Latent means of all scenes, scaled to unit std; the factor goes into the VAE config (SD's 0.18215).

    A VAE taken over untrained (--init) keeps its factor: the UNet it came with learnt latents scaled by it.
    """
    means = torch.cat([vae.encode(to_pixels(chunk).to(device)).latent_dist.mean.float().cpu()
                       for chunk in images.split(256)])
    if rescale:
        vae.register_to_config(scaling_factor=1.0 / means[:4096].std().item())
    return means * vae.config.scaling_factor


def scheduler_config(cfg: Config) -> dict:
    """The schedule the UNet stages train for; the saved model samples with the same one."""
    return dict(sd1.ZERO_SNR_SCHEDULER_CONFIG if cfg.zero_snr else sd1.SCHEDULER_CONFIG)


def unet_loss(unet: UNet2DConditionModel, text_encoder: CLIPTextModel, data: dict, latents: torch.Tensor,
              empty_ids: torch.Tensor, cfg: Config, device: torch.device, photo_share: float = 0.0) -> Callable:
    """DDPM loss (epsilon or, with --zero-snr, velocity); each batch mixes grounded, null-grounded and fuser-free rows.

    Grounded rows sometimes name their objects by shape noun only, or only in the boxes (`NOUN_PHRASE`,
    `BOX_ONLY_CAPTION`), so the fusers must learn what goes where from the grounding tokens. `photo_share` of
    the full captions are read in the "a photo of ..." template.
    """
    noise_scheduler = DDPMScheduler.from_config(scheduler_config(cfg))
    plain = round(cfg.batch * FUSERS_OFF)
    captions = data["caption_ids"]
    if photo_share > 0:
        captions = torch.stack([captions, data["photo_caption_ids"]])

    def loss(gen: torch.Generator) -> torch.Tensor:
        rows = torch.randint(len(latents), (cfg.batch,), generator=gen)
        x0 = latents[rows].to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (cfg.batch,), generator=gen).to(device)
        dropped = torch.rand(cfg.batch, generator=gen) < CAPTION_DROP
        grounded = torch.rand(cfg.batch, generator=gen) < GROUNDED
        fused = grounded & (torch.arange(cfg.batch) >= plain)  # rows whose boxes reach the fusers
        box_only = fused & (torch.rand(cfg.batch, generator=gen) < BOX_ONLY_CAPTION)
        if cfg.zero_snr:  # drawn after the rest, so an epsilon run replays exactly as before
            late = torch.rand(cfg.batch, generator=gen) < LATE_SHARE
            late_t = torch.randint(LATE_T, len(noise_scheduler), (cfg.batch,), generator=gen).to(device)
            t = torch.where(late.to(device), late_t, t)
            box_only |= fused & late & (torch.rand(cfg.batch, generator=gen) < LATE_BOX_ONLY)
        if photo_share > 0:
            full = captions[(torch.rand(cfg.batch, generator=gen) < photo_share).long(), rows]
        else:  # no draw: the UNet stage replays exactly as it was first run
            full = captions[rows]
        ids = torch.where(box_only[:, None], data["setting_ids"][rows], full)
        ids = torch.where(dropped[:, None], empty_ids, ids).to(device)
        xt = noise_scheduler.add_noise(x0, noise, t)
        with autocast(device):
            text = text_encoder(ids)[0]
            gligen = grounding(text_encoder, data, rows[plain:], grounded[plain:], device, gen)
            parts = [unet(xt[:plain], t[:plain], encoder_hidden_states=text[:plain]).sample] if plain else []
            parts.append(unet(xt[plain:], t[plain:], encoder_hidden_states=text[plain:],
                              cross_attention_kwargs={"gligen": gligen}).sample)
            prediction = torch.cat(parts)
        return F.mse_loss(prediction.float(), training_target(noise_scheduler, x0, noise, t))
    return loss


def grounding(text_encoder: CLIPTextModel, data: dict, rows: torch.Tensor, keep: torch.Tensor,
              device: torch.device, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """GLIGEN inputs for `rows`: boxes and pooled phrase features in the first slots, masks 0 elsewhere."""
    noun = torch.rand(data["obj_noun"][rows].shape, generator=gen) < NOUN_PHRASE
    index = torch.where(noun, data["obj_noun"][rows], data["obj_phrase"][rows])
    valid = (index >= 0) & keep[:, None]
    count, slots = index.shape
    boxes = torch.zeros(count, MAX_BOXES, 4, device=device)
    boxes[:, :slots] = data["boxes"][rows].to(device)
    features = torch.zeros(count, MAX_BOXES, text_encoder.config.hidden_size, device=device)
    if valid.any():
        phrases = index[valid]
        features[:, :slots][valid.to(device)] = text_encoder(
            input_ids=data["phrase_ids"][phrases].to(device), attention_mask=data["phrase_mask"][phrases].to(device)
        ).pooler_output.float()
    masks = torch.zeros(count, MAX_BOXES, device=device)
    masks[:, :slots] = valid.float().to(device)
    return {"boxes": boxes, "positive_embeddings": features, "masks": masks}


def save_model(components: Components, cfg: Config, stages: dict[str, dict], command: str, earlier: str) -> None:
    """Write the fp16 diffusers folder and TRAINING.md (with the --init model's own after it)."""
    half = {name: copy.deepcopy(getattr(components, name)).cpu().half() for name in ("vae", "text_encoder", "unet")}
    Components(half["vae"], half["text_encoder"], components.tokenizer, half["unet"], components.scheduler_config,
               "mini", defaults=components.defaults).save(cfg.out)
    megabytes = sum(f.stat().st_size for f in cfg.out.rglob("*") if f.is_file()) / 1e6
    params = {name: sum(p.numel() for p in module.parameters()) for name, module in half.items()}
    lines = [
        "# How `mini` was trained", "",
        f"- command: `python -m pacgen.mini.train {command}`",
        (f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}; device: {cfg.device}, "
         f"{cfg.threads} threads; torch {torch.__version__}"),
        (f"- seed {cfg.seed}; {cfg.scenes} scenes at {cfg.size}x{cfg.size}; batch {cfg.batch}; "
         f"peak lr: VAE {cfg.vae_lr}, UNet {cfg.lr}, tune {cfg.tune_lr}, decoder {cfg.decoder_lr}"),
        f"- VAE scaling factor: {components.vae.config.scaling_factor:.5f}",
        "- noise schedule: " + ("zero terminal SNR, v-prediction" if cfg.zero_snr else "SD-1.x, epsilon-prediction"),
    ]
    for name, state in stages.items():
        if state["total"] == 0:
            lines.append(f"- {name}: 0 steps (`--{name}-steps 0`)")
            continue
        lines.append(f"- {name}: {state['total']} steps in {state['seconds'] / 60:.1f} min "
                     f"({state['total'] * cfg.batch / state['seconds']:.1f} img/s), final loss (EMA) "
                     f"{state['loss']:.4f}; replay with `--{name}-steps {state['total']}`")
    lines += ["- parameters: " + ", ".join(f"{name} {count / 1e6:.2f}M" for name, count in params.items()),
              f"- size on disk: {megabytes:.1f} MB (fp16)"]
    if cfg.init:
        lines += ["", f"## It started from `{cfg.init}` (--init), trained as follows", "",
                  earlier.replace("# How `mini` was trained", "").strip() or "(no TRAINING.md there)"]
    (cfg.out / "TRAINING.md").write_text("\n".join(lines) + "\n")
    log(f"[save] {cfg.out}: {megabytes:.1f} MB")
    if megabytes > MAX_MB:
        raise RuntimeError(f"{cfg.out} is {megabytes:.1f} MB, over the {MAX_MB} MB the repository allows")


def model_defaults(cfg: Config) -> ModelDefaults:
    """What the new model asks for (pacgen.json): the --init model's, else the shipped mini's, whose boxes steer
    every step, as this trainer teaches them to (docs/mini_study.md); its banner names the new image size."""
    source = cfg.init or MINI_DIR
    if not source.is_dir():
        return ModelDefaults()
    defaults = read_defaults(source, sd1.DEFAULTS)
    before = json.loads((source / "vae" / "config.json").read_text())["sample_size"]
    return replace(defaults, banner=defaults.banner.replace(f"{before}x{before}", f"{cfg.size}x{cfg.size}"))


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def main(argv: list[str] | None = None) -> Path:
    cfg = parse_args(argv)
    torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    cfg.work.mkdir(parents=True, exist_ok=True)
    tokenizer = build_toy_tokenizer()
    earlier = (cfg.init / "TRAINING.md").read_text() if cfg.init and (cfg.init / "TRAINING.md").is_file() else ""
    vae, text_encoder, unet = (m.to(device) for m in start_models(cfg, tokenizer))
    data = render_scenes(cfg, tokenizer)
    vae_state = train_stage("vae", {"vae": vae}, vae_loss(vae, rows_from((data["images"], cfg.batch)), device),
                            cfg, cfg.vae_lr, cfg.minutes_vae, cfg.vae_steps)
    cache = cfg.work / "latents.pt"
    cached = torch.load(cache) if cfg.resume and cache.exists() else {}
    if cached.get("vae_step") == vae_state["step"]:
        latents = cached["latents"]
        vae.register_to_config(scaling_factor=cached["scale"])
    else:
        log(f"[encode] encoding {len(data['images'])} scenes")
        latents = encode_scenes(vae, data["images"], device, rescale=cfg.init is None or vae_state["step"] > 0)
        torch.save({"latents": latents, "scale": vae.config.scaling_factor, "vae_step": vae_state["step"]}, cache)
        log(f"[encode] {len(latents)} scenes, scaling factor {vae.config.scaling_factor:.4f}")
    empty_ids = tokenize_prompts(tokenizer, [""])[0]
    latents = latents.to(device)  # once: both UNet stages sample from it
    loss = unet_loss(unet, text_encoder, data, latents, empty_ids, cfg, device)
    unet_state = train_stage("unet", {"unet": unet, "text_encoder": text_encoder}, loss,
                             cfg, cfg.lr, cfg.minutes_unet, cfg.unet_steps)
    states = {"vae": vae_state, "unet": unet_state}
    if cfg.minutes_tune > 0 or cfg.tune_steps:
        data["photo_caption_ids"] = tokenize_prompts(tokenizer, [f"a photo of {text}" for text in data["captions"]])
        tune = unet_loss(unet, text_encoder, data, latents, empty_ids, cfg, device, PHOTO_PREFIX)
        states["tune"] = train_stage("tune", {"unet": unet, "text_encoder": text_encoder}, tune, cfg, cfg.tune_lr,
                                     cfg.minutes_tune, cfg.tune_steps)
    if cfg.minutes_decoder > 0 or cfg.decoder_steps:
        vae.requires_grad_(False)
        decoder = {"decoder": vae.decoder, "post_quant_conv": vae.post_quant_conv}
        for module in decoder.values():
            module.requires_grad_(True)
        half = cfg.batch // 2  # world scenes, then scenes with a kit-like object
        loss = vae_loss(vae, rows_from((data["images"], half), (render_pattern_scenes(cfg), cfg.batch - half)), device)
        states["decoder"] = train_stage("decoder", decoder, loss, cfg, cfg.decoder_lr, cfg.minutes_decoder,
                                        cfg.decoder_steps)
    save_model(Components(vae, text_encoder, tokenizer, unet, scheduler_config(cfg), "mini",
                          defaults=model_defaults(cfg)),
               cfg, states, shlex.join(sys.argv[1:] if argv is None else argv), earlier)
    return cfg.out


if __name__ == "__main__":
    main()
