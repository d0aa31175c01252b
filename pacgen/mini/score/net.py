"""The scorer's networks: a small CNN (`Net`) and the `Scorer` that pairs a crop classifier with a background one.

Both see 16x16 inputs (`CROP`); the crop network's penultimate layer is the identity embedding.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from pacgen.mini.score.metrics import CROP, box_iou, crop, to_tensor
from pacgen.mini.world import BACKGROUNDS, COLOURS, PATTERNS, SHAPES, PlacedObject

HEADS = {"shape": SHAPES, "colour": tuple(COLOURS), "pattern": PATTERNS}
SCORER_FILE = "scorer.safetensors"


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


def scorer_path(pipe) -> Path:
    """The scorer that travels with a model: `scorer.safetensors` in the folder it was loaded from."""
    folder = pipe.components.folder
    if folder is None:
        raise SystemExit(f"{pipe.components.model_id} has no model folder to keep a scorer in: pass --scorer PATH")
    return folder / SCORER_FILE
