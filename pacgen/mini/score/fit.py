"""Training the scorer on the renderer's ground truth only: jittered object crops and whole scenes."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pacgen.mini.kit import random_concept
from pacgen.mini.score.metrics import CROP, TRAIN_STREAM, crop
from pacgen.mini.score.net import HEADS, Net, Scorer
from pacgen.mini.world import BACKGROUNDS, Box, PlacedObject, random_box, render, sample_scene

JITTER = 0.12  # box edges move by up to this share of the side in training crops: generated objects are not exact
UNLABELLED = -100  # cross_entropy's ignore_index: a kit-like object has a shape, but no world colour or pattern


def _jitter(box: Box, rng: np.random.Generator) -> Box:
    w, h = box[2] - box[0], box[3] - box[1]
    d = rng.uniform(-JITTER, JITTER, 4) * np.array([w, h, w, h])
    x0, y0, x1, y1 = np.clip(np.array(box) + d, 0, 1)
    return (float(x0), float(y0), float(max(x1, x0 + 0.05)), float(max(y1, y0 + 0.05)))


def _uint8(images: list[Image.Image]) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2)


def training_set(scenes: int, size: int, seed: int) -> dict[str, torch.Tensor]:
    """Jittered object crops with (shape, colour, pattern) labels, and downscaled scenes with background labels.
    Each scene also gives a kit-like object (two random colours in a kit pattern, a mark: `kit.random_concept`) with
    its shape label only: a shape classifier that has seen one-colour objects alone misreads a two-colour concept's
    shape, even the renderer's own drawing of it, and "shape kept" would measure the classifier, not the concept."""
    crops, labels, wholes, backgrounds = [], [], [], []
    for i in range(scenes):
        rng = np.random.default_rng([seed, TRAIN_STREAM, i])
        scene = sample_scene(rng, size, min_side=0.2, max_side=0.85)  # wider than mini's range: bench boxes fit
        wholes.append(scene.image.resize((CROP, CROP), Image.Resampling.BOX))
        backgrounds.append(BACKGROUNDS.index(scene.background))
        for obj in scene.objects:
            for _ in range(2):
                crops.append(crop(scene.image, _jitter(obj.box, rng)))
                labels.append([HEADS[name].index(getattr(obj.spec, name)) for name in HEADS])
        concept = PlacedObject(random_concept(rng), random_box(rng, 0.2, 0.85))
        image = render(BACKGROUNDS[rng.integers(len(BACKGROUNDS))], [concept], size, rng)[0]
        crops.append(crop(image, _jitter(concept.box, rng)))
        labels.append([HEADS["shape"].index(concept.spec.shape)] + [UNLABELLED] * (len(HEADS) - 1))
    return {"crops": _uint8(crops), "labels": torch.tensor(labels), "wholes": _uint8(wholes),
            "backgrounds": torch.tensor(backgrounds)}


def _augment(batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """uint8 -> [-1, 1], random horizontal flips and, for a third of the rows, a 2x blur (generated images are soft)."""
    x = batch.float() / 127.5 - 1
    flip = torch.rand(len(x), generator=gen) < 0.5
    x[flip] = x[flip].flip(-1)
    soft = torch.rand(len(x), generator=gen) < 0.33
    x[soft] = F.interpolate(F.avg_pool2d(x[soft], 2), scale_factor=2, mode="bilinear", align_corners=False)
    return x


def train_scorer(size: int = 32, minutes: float = 3.0, seed: int = 0, scenes: int = 6000, steps: int | None = None,
                 log: bool = True) -> Scorer:
    """Render `scenes` scenes, then train both networks for what is left of `minutes` (or exactly `steps` steps)."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    data = training_set(scenes, size, seed)
    crop_net, background_net = Net({k: len(v) for k, v in HEADS.items()}), Net({"background": len(BACKGROUNDS)})
    params = list(crop_net.parameters()) + list(background_net.parameters())
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    deadline = started + minutes * 60
    if log:
        print(f"[scorer] {len(data['crops'])} crops from {scenes} scenes in {time.perf_counter() - started:.0f}s",
              flush=True)
    step, loss_ema = 0, None
    while step < steps if steps is not None else (time.perf_counter() < deadline or step == 0):
        rows = torch.randint(len(data["crops"]), (256,), generator=gen)
        whole_rows = torch.randint(len(data["wholes"]), (64,), generator=gen)
        _, logits = crop_net(_augment(data["crops"][rows], gen))
        _, bg_logits = background_net(_augment(data["wholes"][whole_rows], gen))
        loss = sum(F.cross_entropy(logits[name], data["labels"][rows, k], ignore_index=UNLABELLED)
                   for k, name in enumerate(HEADS))
        loss = loss + F.cross_entropy(bg_logits["background"], data["backgrounds"][whole_rows])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        loss_ema = loss.item() if loss_ema is None else 0.98 * loss_ema + 0.02 * loss.item()
        if log and step % 200 == 0:
            print(f"[scorer] step {step} loss {loss_ema:.3f} ({time.perf_counter() - started:.0f}s)", flush=True)
    with torch.no_grad():
        centre = torch.cat([crop_net(chunk.float() / 127.5 - 1)[0] for chunk in data["crops"].split(1024)]).mean(0)
    return Scorer(crop_net.eval(), background_net.eval(), centre, size)


def load_or_train(path: Path, size: int, minutes: float, seed: int = 0, retrain: bool = False) -> Scorer:
    if path.is_file() and not retrain:
        scorer = Scorer.load(path)
        if scorer.size == size:
            return scorer
        print(f"[scorer] {path} was trained at {scorer.size} px, not {size}: retraining", flush=True)
    scorer = train_scorer(size, minutes, seed)
    print(f"[scorer] saved {scorer.save(path)}", flush=True)
    return scorer
