"""Scores for `mini` images, learned from and checked against the toy world's ground truth only.

    python -m pacgen.mini.score --model /tmp/mini-out --n 200

What is measured, and how:

- **Colour / shape+colour**: a small CNN classifies the crop inside each requested box (shape, colour and
  pattern heads). It is trained on renderer crops with jittered boxes, never on model outputs.
- **Identity**: cosine similarity of the same CNN's embedding (its penultimate layer, centred on the mean
  embedding of the world's training crops, L2-normalised) between a crop and the mean embedding of reference
  crops (a concept's photos). The network never sees a kit concept: the embedding is whatever separates the
  world's shapes, colours and patterns.
- **Background**: a second small CNN on the whole (downscaled) image, 4 classes.
- **Box IoU**: colour segmentation, not a learned detector. A pixel belongs to the object when its nearest
  reference colour is one the renderer paints the object with (its colour, plus the darker shade when
  patterned; a kit concept's two colours), rather than a background colour (every colour `make_background`
  produced in a few renders), the outline or another palette colour, and is within `MAX_COLOUR_DIST`. That
  region grows by up to `GROW` pixels into pixels that match no background colour (the outline, anti-aliased
  edges, thin star tips); the largest 4-connected component that touches the requested box gives the predicted
  box. An object drawn in the wrong colour therefore scores IoU 0. The benchmark's one-object images use the
  colour-blind variant (no colours: every pixel far from all background colours).
- **Artifact rate**: share of pixels outside every box (1-pixel margin) that look like augmentation fill or a
  pasted border. Fill: a pixel within `FILL_DIST` of a background colour (fill is the photo's mean edge colour)
  whose 5x5 neighbourhood has a smaller colour range than 99% of the background pixels of ground-truth scenes
  with that background, as rendered or as the model's VAE reconstructs them (`texture_floors`; night is drawn
  that flat, so there fill is undetectable and only borders count). Border: a straight run, at least a quarter
  of the image side, of pixels where the colour steps by more than `EDGE_STEP` across two pixels.

The CLI prints the scorer's calibration (ground-truth renders, their VAE reconstructions, mismatched scenes
as chance, zoom-out augmented renders for the artifact rate) and the quality gates on generated images.
"""
from __future__ import annotations

import argparse
import functools
import math
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from pacgen.augment import AugmentConfig, augment, square
from pacgen.mini.world import (BACKGROUNDS, COLOURS, OUTLINE, PATTERNS, SHAPES, RGB, Box, Drawable, ObjectSpec,
                               PlacedObject, make_background, sample_scene, shade)

CROP = 16  # crops and whole images are resampled to 16x16 before the networks see them
HEADS = {"shape": SHAPES, "colour": tuple(COLOURS), "pattern": PATTERNS}
SCORER_FILE = "scorer.safetensors"
TRAIN_STREAM, EVAL_STREAM, FLOOR_STREAM = 7919, 104729, 15485863  # disjoint from mini's training scenes ([seed, i])
JITTER = 0.12  # box edges move by up to this share of the side in training crops: generated objects are not exact
MAX_COLOUR_DIST = 80.0
MERGE_DIST = 60.0  # a palette colour this close to a target (a kit colour near a world one) is no rival
BACKGROUND_DIST = 10.0  # farther than this from every background colour: part of some object
FOREGROUND_DIST = 20.0  # colour-blind localisation: object pixels are this far from every background colour
GROW = 3  # pixels the object's colour region may grow into non-background pixels
FILL_DIST = 25.0  # fill is the photo's mean edge colour: near some background colour, unlike a plain object
EDGE_STEP = 45.0
GATES = {  # tier -> (colour match, shape+colour, mean IoU); one 25-step image in <= 2 s on the 2-core CPU either way
    "CPU (<= 2 h training)": (0.50, 0.25, 0.35),
    "GPU": (0.85, 0.70, 0.55),
}
MAX_SECONDS = 2.0


# ----------------------------------------------------------------------------------------- pixels


def crop(image: Image.Image, box: Box, side: int = CROP) -> Image.Image:
    """The region of a normalised box resampled to side x side; sub-pixel exact, so tiny boxes keep their place."""
    w, h = image.size
    return image.convert("RGB").resize((side, side), Image.Resampling.BILINEAR,
                                       box=(box[0] * w, box[1] * h, box[2] * w, box[3] * h))


def to_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL images (all one size) -> float (N, 3, H, W) in [-1, 1]."""
    array = np.stack([np.asarray(im.convert("RGB")) for im in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2).float() / 127.5 - 1


def iou(a: Box, b: Box) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# ----------------------------------------------------------------------------------------- box IoU by colour


@functools.cache
def background_colours() -> np.ndarray:
    """Every colour the renderer paints backgrounds with (three renders of each, rounded to multiples of 4)."""
    pixels = [make_background(bg, 32, np.random.default_rng([EVAL_STREAM, k])).reshape(-1, 3)
              for bg in BACKGROUNDS for k in range(3)]
    return np.unique(np.concatenate(pixels) // 4 * 4, axis=0).astype(np.float32)


def object_colours(spec: Drawable) -> list[RGB]:
    """The colours the renderer paints an object's interior with."""
    if isinstance(spec, ObjectSpec):
        base = COLOURS[spec.colour]
        return [base] if spec.pattern == "plain" else [base, shade(base, 0.55)]
    return list(spec.colours)  # a kit concept


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a small boolean mask, as index arrays (rows, cols)."""
    seen = np.zeros_like(mask)
    found = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        stack, cells = [start], []
        seen[start] = True
        while stack:
            y, x = stack.pop()
            cells.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        found.append(np.array(cells).T)
    return found


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def localise(image: Image.Image, box: Box, colours: list[RGB] | None = None) -> Box | None:
    """Where the object painted in `colours` is, near the requested box (see the module docstring); None if absent.

    Without colours: where any object is, as pixels farther than FOREGROUND_DIST from every background colour
    (for one-object images, where placement is measured apart from looks).
    """
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    h, w = pixels.shape[:2]
    flat = pixels.reshape(-1, 1, 3)
    to_background = np.linalg.norm(flat - background_colours()[None], axis=-1).min(1).reshape(h, w)
    if colours is None:  # not grown: the VAE's backgrounds stray past BACKGROUND_DIST, and growth would leak
        mask = to_background > FOREGROUND_DIST
    else:
        targets = np.array(colours, dtype=np.float32)
        palette = np.array([c for rgb in COLOURS.values() for c in (rgb, shade(rgb, 0.55))], dtype=np.float32)
        palette = palette[np.linalg.norm(palette[:, None] - targets[None], axis=-1).min(1) > MERGE_DIST]
        rivals = np.concatenate([background_colours(), np.array([OUTLINE], np.float32), palette])
        to_target = np.linalg.norm(flat - targets[None], axis=-1).min(1)
        to_rival = np.linalg.norm(flat - rivals[None], axis=-1).min(1)
        mask = ((to_target < to_rival) & (to_target <= MAX_COLOUR_DIST)).reshape(h, w)
        for _ in range(GROW):  # into the outline, anti-aliased edges and thin tips, never into background
            mask |= _dilate(mask) & (to_background > BACKGROUND_DIST)
    x0, y0 = math.floor(box[0] * w), math.floor(box[1] * h)
    x1, y1 = math.ceil(box[2] * w), math.ceil(box[3] * h)
    touching = [c for c in _components(mask) if ((c[0] >= y0) & (c[0] < y1) & (c[1] >= x0) & (c[1] < x1)).any()]
    if not touching:
        return None
    rows, cols = max(touching, key=lambda c: len(c[0]))
    return (cols.min() / w, rows.min() / h, (cols.max() + 1) / w, (rows.max() + 1) / h)


def box_iou(image: Image.Image, obj: PlacedObject) -> float:
    found = localise(image, obj.box, object_colours(obj.spec))
    return iou(found, obj.box) if found else 0.0


# ----------------------------------------------------------------------------------------- artifacts


def _local_range(pixels: np.ndarray, k: int = 5) -> np.ndarray:
    """Per pixel: the largest per-channel (max - min) over its k x k neighbourhood."""
    padded = np.pad(pixels, ((k // 2, k // 2), (k // 2, k // 2), (0, 0)), mode="edge")
    windows = sliding_window_view(padded, (k, k), axis=(0, 1))
    return (windows.max(axis=(-1, -2)) - windows.min(axis=(-1, -2))).max(-1)


def texture_floors(decode: Callable[[list[Image.Image]], list[Image.Image]] | None = None, size: int = 32,
                   n: int = 100) -> dict[str, float]:
    """Per background, the 1st percentile of the 5x5 colour range over background pixels (outside the boxes, near
    a background colour) of ground-truth scenes, after `decode` (the model's VAE round trip) when given.

    Texture flatter than this is fill. Where the background itself is that flat (night), the floor is ~0 and
    fill cannot be told from it.
    """
    scenes = [sample_scene(np.random.default_rng([FLOOR_STREAM, i]), size) for i in range(n)]
    images = [s.image for s in scenes]
    images = decode(images) if decode else images
    ranges: dict[str, list[np.ndarray]] = {bg: [] for bg in BACKGROUNDS}
    for image, scene in zip(images, scenes):
        pixels = np.asarray(image, np.float32)
        keep = outside_boxes(image.size, [o.box for o in scene.objects]) & _near_background(pixels)
        ranges[scene.background].append(_local_range(pixels)[keep])
    return {bg: float(np.percentile(np.concatenate(r), 1)) for bg, r in ranges.items()}


@functools.cache
def renderer_floors(size: int = 32) -> dict[str, float]:
    return texture_floors(None, size)


def _near_background(pixels: np.ndarray) -> np.ndarray:
    """Pixels within FILL_DIST of some background colour (fill is a photo's mean edge colour: one of those)."""
    distance = np.linalg.norm(pixels.reshape(-1, 1, 3) - background_colours()[None], axis=-1).min(1)
    return (distance <= FILL_DIST).reshape(pixels.shape[:2])


def _straight_steps(pixels: np.ndarray, run: int) -> np.ndarray:
    """Pixels on a horizontal line (of at least `run` pixels) across which the colour steps by > EDGE_STEP."""
    step = np.zeros(pixels.shape[:2], bool)
    step[1:-1] = np.abs(pixels[2:] - pixels[:-2]).max(-1) > EDGE_STEP
    out = np.zeros_like(step)
    for y in range(step.shape[0]):
        padded = np.concatenate([[0], step[y].astype(np.int8), [0]])
        starts, ends = np.nonzero(np.diff(padded) == 1)[0], np.nonzero(np.diff(padded) == -1)[0]
        for s, e in zip(starts, ends):
            if e - s >= run:
                out[y, s:e] = True
    return out


def outside_boxes(size: tuple[int, int], boxes: Sequence[Box], margin: int = 1) -> np.ndarray:
    """Pixels whose centre lies outside every box grown by `margin` pixels."""
    w, h = size
    ys, xs = (np.arange(h) + 0.5)[:, None], (np.arange(w) + 0.5)[None, :]
    outside = np.ones((h, w), bool)
    for x0, y0, x1, y1 in boxes:
        inside = ((xs >= x0 * w - margin) & (xs <= x1 * w + margin) & (ys >= y0 * h - margin) & (ys <= y1 * h + margin))
        outside &= ~inside
    return outside


def artifact_map(image: Image.Image, boxes: Sequence[Box], background: str,
                 floors: dict[str, float] | None = None) -> np.ndarray:
    """Pixels outside the boxes that look like flat augmentation fill or a straight pasted border.

    `floors` (from `texture_floors`) default to the renderer's own; pass the VAE's for generated images.
    """
    floors = floors or renderer_floors(image.width)
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    run = max(4, pixels.shape[1] // 4)
    edges = _straight_steps(pixels, run) | _straight_steps(pixels.transpose(1, 0, 2), run).T
    flat = (_local_range(pixels) < floors[background]) & _near_background(pixels)
    return (flat | edges) & outside_boxes(image.size, boxes)


def artifact_rate(image: Image.Image, boxes: Sequence[Box], background: str,
                  floors: dict[str, float] | None = None) -> float:
    outside = outside_boxes(image.size, boxes)
    return float(artifact_map(image, boxes, background, floors).sum() / max(outside.sum(), 1))


# ----------------------------------------------------------------------------------------- networks


class Net(nn.Module):
    """A 16x16-input CNN: an embedding (penultimate layer) and one linear head per label set."""

    def __init__(self, heads: dict[str, int], width: int = 32, dim: int = 64):
        super().__init__()

        def conv(i: int, o: int) -> list[nn.Module]:
            return [nn.Conv2d(i, o, 3, padding=1), nn.ReLU()]

        self.features = nn.Sequential(
            *conv(3, width), *conv(width, width), nn.MaxPool2d(2),
            *conv(width, 2 * width), *conv(2 * width, 2 * width), nn.MaxPool2d(2),
            *conv(2 * width, 2 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, dim),
        )
        self.heads = nn.ModuleDict({name: nn.Linear(dim, n) for name, n in heads.items()})

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        embedding = self.features(x)
        return embedding, {name: head(F.relu(embedding)) for name, head in self.heads.items()}


@dataclass
class Scorer:
    crop_net: Net  # heads: shape, colour, pattern
    background_net: Net  # head: background
    centre: torch.Tensor  # mean embedding of the world's training crops: cosines are taken around it
    size: int  # image side the scorer was trained at

    @torch.no_grad()
    def classify(self, crops: Sequence[Image.Image]) -> list[dict[str, str]]:
        """Shape, colour and pattern names of each crop (any size; resampled to CROP)."""
        _, logits = self.crop_net(to_tensor([c.resize((CROP, CROP), Image.Resampling.BILINEAR) for c in crops]))
        picks = {name: logits[name].argmax(1).tolist() for name in HEADS}
        return [{name: HEADS[name][picks[name][k]] for name in HEADS} for k in range(len(crops))]

    @torch.no_grad()
    def embed(self, crops: Sequence[Image.Image]) -> torch.Tensor:
        embedding, _ = self.crop_net(to_tensor([c.resize((CROP, CROP), Image.Resampling.BILINEAR) for c in crops]))
        return F.normalize(embedding - self.centre, dim=1)

    def identity(self, crops: Sequence[Image.Image], reference_crops: Sequence[Image.Image]) -> float:
        """Mean cosine similarity of each crop to the mean embedding of the references (a concept's photo crops)."""
        reference = F.normalize(self.embed(reference_crops).mean(0), dim=0)
        return float((self.embed(crops) @ reference).mean())

    @torch.no_grad()
    def background(self, images: Sequence[Image.Image]) -> list[str]:
        _, logits = self.background_net(to_tensor([im.convert("RGB").resize((CROP, CROP), Image.Resampling.BOX)
                                                   for im in images]))
        return [BACKGROUNDS[k] for k in logits["background"].argmax(1).tolist()]

    def score_scene(self, image: Image.Image, objects: Sequence[PlacedObject], background: str) -> dict:
        """Per-object colour_ok, shape_colour_ok and iou (lists, in object order), and background_ok."""
        labels = self.classify([crop(image, o.box) for o in objects])
        colour_ok = [lab["colour"] == o.spec.colour for lab, o in zip(labels, objects)]
        return {
            "colour_ok": colour_ok,
            "shape_colour_ok": [ok and lab["shape"] == o.spec.shape for ok, lab, o in zip(colour_ok, labels, objects)],
            "iou": [box_iou(image, o) for o in objects],
            "background_ok": self.background([image])[0] == background,
        }

    def save(self, path: str | Path) -> Path:
        """fp16 safetensors (about 0.4 MB)."""
        state = {f"crop.{k}": v.half() for k, v in self.crop_net.state_dict().items()}
        state.update({f"background.{k}": v.half() for k, v in self.background_net.state_dict().items()})
        state["centre"] = self.centre.half()
        save_file(state, str(path), metadata={"size": str(self.size), "crop": str(CROP)})
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Scorer:
        state = {k: v.float() for k, v in load_file(str(path)).items()}
        with safe_open(str(path), "pt") as f:
            size = int(f.metadata()["size"])
        crop_net, background_net = Net({k: len(v) for k, v in HEADS.items()}), Net({"background": len(BACKGROUNDS)})
        crop_net.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("crop.")})
        background_net.load_state_dict({k[11:]: v for k, v in state.items() if k.startswith("background.")})
        return cls(crop_net.eval(), background_net.eval(), state["centre"], size)


# ----------------------------------------------------------------------------------------- training


def _jitter(box: Box, rng: np.random.Generator) -> Box:
    w, h = box[2] - box[0], box[3] - box[1]
    d = rng.uniform(-JITTER, JITTER, 4) * np.array([w, h, w, h])
    x0, y0, x1, y1 = np.clip(np.array(box) + d, 0, 1)
    return (float(x0), float(y0), float(max(x1, x0 + 0.05)), float(max(y1, y0 + 0.05)))


def _uint8(images: list[Image.Image]) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2)


def training_set(scenes: int, size: int, seed: int) -> dict[str, torch.Tensor]:
    """Jittered object crops with (shape, colour, pattern) labels, and downscaled scenes with background labels."""
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
        loss = sum(F.cross_entropy(logits[name], data["labels"][rows, k]) for k, name in enumerate(HEADS))
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


# ----------------------------------------------------------------------------------------- CLI


def held_out_scenes(n: int, size: int, seed: int = 0) -> list:
    """Scenes from mini's training distribution, from an rng stream neither mini nor the scorer trained on."""
    return [sample_scene(np.random.default_rng([seed, EVAL_STREAM, i]), size) for i in range(n)]


@torch.no_grad()
def vae_roundtrip(pipe, images: list[Image.Image]) -> list[Image.Image]:
    """Encode and decode through the model's VAE: the best any generated image can be."""
    comp = pipe.components
    pixels = pipe.image_processor.preprocess(images).to(comp.device, comp.dtype)
    decoded = torch.cat([comp.vae.decode(comp.vae.encode(chunk).latent_dist.mean).sample for chunk in pixels.split(64)])
    return pipe.image_processor.postprocess(decoded.float(), output_type="pil")


def zoom_out(scene, size: int, rng: random.Random,
             scale: tuple[float, float] = AugmentConfig.zoom_out_scale) -> tuple[Image.Image, list[Box]]:
    """A scene as PACGen's zoom-out augmentation pastes it: a positive example for the artifact rate."""
    config = AugmentConfig(zoom_out_prob=1.0, zoom_out_scale=scale, flip_prob=0.0)
    sample = augment(square(scene.image, size), size, config, rng)
    px0, py0, px1, py1 = sample.box
    boxes = [(px0 + b[0] * (px1 - px0), py0 + b[1] * (py1 - py0), px0 + b[2] * (px1 - px0), py0 + b[3] * (py1 - py0))
             for b in (o.box for o in scene.objects)]
    return sample.image, boxes


def summarise(scorer: Scorer, images: list[Image.Image], scenes: list,
              floors: dict[str, float] | None) -> dict[str, float]:
    """Colour, shape+colour and IoU averaged over objects; background (and, given floors, artifacts) over images."""
    colour, shape_colour, ious, background = [], [], [], []
    for image, scene in zip(images, scenes):
        scores = scorer.score_scene(image, scene.objects, scene.background)
        colour += scores["colour_ok"]
        shape_colour += scores["shape_colour_ok"]
        ious += scores["iou"]
        background.append(scores["background_ok"])
    out = {"colour": float(np.mean(colour)), "shape_colour": float(np.mean(shape_colour)),
           "iou": float(np.mean(ious)), "background": float(np.mean(background))}
    if floors:
        out["artifacts"] = mean_artifacts(images, [[o.box for o in s.objects] for s in scenes],
                                          [s.background for s in scenes], floors)
    return out


def mean_artifacts(images: list[Image.Image], boxes: list[list[Box]], backgrounds: list[str],
                   floors: dict[str, float]) -> float:
    return float(np.mean([artifact_rate(im, b, bg, floors) for im, b, bg in zip(images, boxes, backgrounds)]))


def _row(name: str, s: dict[str, float]) -> str:
    cells = [f"{s[k]:.1%}" if k in s else "–" for k in ("colour", "shape_colour")]
    cells.append(f"{s['iou']:.3f}" if "iou" in s else "–")
    cells += [f"{s[k]:.1%}" if k in s else "–" for k in ("background", "artifacts")]
    return f"| {name} | " + " | ".join(cells) + " |"


def gate_table(measured: dict[str, float], seconds: float) -> list[str]:
    lines = ["| gate | measured | " + " | ".join(GATES) + " |", "|---|---|" + "---|" * len(GATES)]
    names = [("colour match", "colour", "{:.1%}"), ("shape+colour", "shape_colour", "{:.1%}"),
             ("mean box IoU", "iou", "{:.3f}")]
    for k, (label, key, fmt) in enumerate(names):
        cells = [f"≥ {fmt.format(t[k])} {'PASS' if measured[key] >= t[k] else 'FAIL'}" for t in GATES.values()]
        lines.append(f"| {label} | {fmt.format(measured[key])} | " + " | ".join(cells) + " |")
    speed = f"≤ {MAX_SECONDS:.0f} s {'PASS' if seconds <= MAX_SECONDS else 'FAIL'}"
    lines.append(f"| s per 25-step image | {seconds:.2f} | " + " | ".join([speed] * len(GATES)) + " |")
    return lines


def sample_sheet(scenes: list, generated: list[Image.Image], pairs_per_row: int = 4, tile: int = 128) -> Image.Image:
    """Each scene's ground truth beside the generated image, both with the requested boxes drawn."""
    from pacgen.layout import Box as LayoutBox
    from pacgen.studio import Studio

    rows = math.ceil(len(scenes) / pairs_per_row)
    sheet = Image.new("RGB", (2 * tile * pairs_per_row, tile * rows), "white")
    for k, (scene, image) in enumerate(zip(scenes, generated)):
        boxes = [LayoutBox(o.spec.phrase, o.box) for o in scene.objects]
        for j, picture in enumerate((scene.image, image)):
            drawn = Studio.overlay(picture, boxes).resize((tile, tile), Image.Resampling.LANCZOS)
            sheet.paste(drawn, ((2 * (k % pairs_per_row) + j) * tile, (k // pairs_per_row) * tile))
    return sheet


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Scorer calibration and quality gates for a mini model.")
    p.add_argument("--model", required=True, help="mini model folder (or 'mini')")
    p.add_argument("--n", type=int, default=200, help="held-out scenes (calibration and generation)")
    p.add_argument("--scorer", type=Path, help="default: <model>/scorer.safetensors, trained there when missing")
    p.add_argument("--train-minutes", type=float, default=3.0)
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--threads", type=int, default=2, help="torch threads (the speed gate is for the 2-core CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="also write the report (markdown) here")
    p.add_argument("--samples", type=Path, help="also write a PNG of the first 8 scenes: truth beside generated")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from pacgen.layout import Box as LayoutBox
    from pacgen.models import MINI_DIR
    from pacgen.sampling import PACGenPipeline

    pipe = PACGenPipeline.from_pretrained(args.model, device="cpu")
    size = pipe.components.default_size
    model_dir = MINI_DIR if args.model == "mini" else Path(args.model)
    scorer = load_or_train(args.scorer or model_dir / SCORER_FILE, size, args.train_minutes, args.seed, args.retrain)
    scenes = held_out_scenes(args.n, size, args.seed)
    truth = [s.image for s in scenes]
    decode = functools.partial(vae_roundtrip, pipe)
    floors = {"renderer": renderer_floors(size), "VAE": texture_floors(decode, size)}
    rng = random.Random(args.seed)
    pasted, pasted_boxes = zip(*[zoom_out(s, size, rng) for s in scenes])
    backgrounds = [s.background for s in scenes]
    rows = {
        "ground-truth renders": summarise(scorer, truth, scenes, floors["renderer"]),
        "VAE reconstructions": summarise(scorer, decode(truth), scenes, floors["VAE"]),
        "mismatched scenes (chance)": summarise(scorer, truth[1:] + truth[:1], scenes, None),
        "zoom-out augmented renders": {"artifacts": mean_artifacts(list(pasted), list(pasted_boxes), backgrounds,
                                                                   floors["renderer"])},
        "zoom-out augmented, VAE": {"artifacts": mean_artifacts(decode(list(pasted)), list(pasted_boxes), backgrounds,
                                                                floors["VAE"])},
    }
    print(f"[score] calibration done; generating {args.n} images at {args.steps} steps", flush=True)
    generated, seconds = [], []
    for k, scene in enumerate(scenes):
        result = pipe(scene.caption, boxes=[LayoutBox(o.spec.phrase, o.box) for o in scene.objects],
                      num_inference_steps=args.steps, seed=args.seed * 100_000 + k)
        generated.append(result.images[0])
        seconds.append(result.timings["total_s"])
        if (k + 1) % 25 == 0:
            print(f"[score] {k + 1}/{args.n} generated, median {statistics.median(seconds):.2f} s/image", flush=True)
    rows[f"generated ({args.steps} steps)"] = measured = summarise(scorer, generated, scenes, floors["VAE"])
    header = "| images | colour | shape+colour | mean IoU | background | artifact rate |"
    lines = [f"# mini quality: {args.model}", "",
             f"{args.n} held-out scenes at {size} px; scorer {scorer.size} px; {args.threads} torch threads. "
             "Artifact texture floors (5x5 colour range, 1st percentile): "
             + "; ".join(f"{k} " + ", ".join(f"{bg} {v:.0f}" for bg, v in f.items()) for k, f in floors.items()), "",
             header, "|---|---|---|---|---|---|", *[_row(name, s) for name, s in rows.items()], "",
             *gate_table(measured, statistics.median(seconds)), ""]
    report = "\n".join(lines)
    print(report, flush=True)
    if args.samples:
        sample_sheet(scenes[:8], generated[:8]).save(args.samples)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)


if __name__ == "__main__":
    main()
