"""Scores for `mini` images, learned from and checked against the toy world's ground truth only.

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

Modules: `metrics` (crops, IoU, colour localisation, artifact rate), `net` (the CNN and the `Scorer`), `fit`
(training the scorer), `evaluate` (held-out scenes, VAE round trips, zoom-out pastes, summaries), `report` (tables
and the sample sheet). `python -m pacgen.mini.score --model ... --n 200` prints the scorer's calibration and the
quality gates (`__main__`).
"""
from pacgen.mini.score.evaluate import held_out_scenes, summarise, vae_roundtrip, zoom_out
from pacgen.mini.score.fit import load_or_train, train_scorer
from pacgen.mini.score.metrics import CROP, artifact_rate, box_iou, crop, iou, localise, texture_floors
from pacgen.mini.score.net import SCORER_FILE, Net, Scorer, scorer_path
from pacgen.mini.score.report import sample_sheet

__all__ = [
    "CROP", "SCORER_FILE", "Net", "Scorer", "artifact_rate", "box_iou", "crop", "held_out_scenes", "iou",
    "load_or_train", "localise", "sample_sheet", "scorer_path", "summarise", "texture_floors", "train_scorer", "vae_roundtrip",
    "zoom_out",
]
