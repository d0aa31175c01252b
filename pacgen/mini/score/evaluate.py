"""What the quality gate scores: held-out scenes, their VAE reconstructions and zoom-out pastes, and the summary of
a set of images (colour, shape+colour, IoU, background, artifacts)."""
from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image

from pacgen.augment import AugmentConfig, augment, square
from pacgen.mini.score.metrics import EVAL_STREAM, artifact_rate
from pacgen.mini.score.net import Scorer
from pacgen.mini.world import Box, sample_scene


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
