"""Toy world and concept kit: determinism, geometry, captions and the kit's novelty."""
import functools
import itertools

import numpy as np
import pytest

from pacgen.mini.kit import KIT, kit_layouts, kit_photos, write_kit
from pacgen.mini.world import (BACKGROUNDS, COLOURS, PATTERNS, SHAPES, ObjectSpec, PlacedObject,
                               make_background, render, render_object, sample_scene, shade)


@functools.cache
def scenes(n=40, size=64):
    return tuple(sample_scene(np.random.default_rng(seed), size) for seed in range(n))


def iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def box_coverage(mask, box):
    """Fraction of the box's pixels that the mask covers, and whether the mask stays inside it."""
    size = mask.shape[0]
    centres = (np.arange(size) + 0.5) / size
    inside_x = (centres >= box[0] - 1 / size) & (centres <= box[2] + 1 / size)
    inside_y = (centres >= box[1] - 1 / size) & (centres <= box[3] + 1 / size)
    inside = inside_y[:, None] & inside_x[None, :]
    box_px = (box[2] - box[0]) * (box[3] - box[1]) * size * size
    return mask.sum() / box_px, not (mask & ~inside).any()


@pytest.mark.parametrize("size", [64, 32])
def test_same_seed_is_byte_identical_and_seeds_differ(size):
    a, b, c = (sample_scene(np.random.default_rng(s), size) for s in (7, 7, 8))
    assert a.image.size == (size, size)
    assert a.image.tobytes() == b.image.tobytes() and a.caption == b.caption
    assert a.image.tobytes() != c.image.tobytes()


def test_boxes_are_valid_square_ish_and_barely_overlap():
    for scene in scenes():
        assert 1 <= len(scene.objects) <= 2
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.box
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
            assert 0.8 - 1e-9 <= (x1 - x0) / (y1 - y0) <= 1.25 + 1e-9
        for a, b in itertools.combinations(scene.objects, 2):
            assert iou(a.box, b.box) <= 0.2


def test_scene_masks_lie_in_their_boxes_and_top_object_fills_it():
    for scene in scenes():
        assert len(scene.masks) == len(scene.objects)
        for obj, mask in zip(scene.objects, scene.masks):
            assert mask.dtype == bool and mask.shape == (64, 64)
            assert box_coverage(mask, obj.box)[1]
        assert box_coverage(scene.masks[-1], scene.objects[-1].box)[0] >= 0.3


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_fills_its_box(shape):
    box = (0.2, 0.25, 0.7, 0.8)
    _, (mask,) = render("sand", [PlacedObject(ObjectSpec(shape, "red", "dotted"), box)], 64,
                        np.random.default_rng(0))
    coverage, inside = box_coverage(mask, box)
    assert inside and coverage >= 0.3


def test_caption_names_every_object_and_the_background():
    for scene in scenes():
        assert scene.caption.endswith(f" on {scene.background}")
        for obj in scene.objects:
            assert obj.spec.phrase in scene.caption
    assert ObjectSpec("star", "red", "striped").phrase == "a red striped star"
    assert ObjectSpec("star", "orange").phrase == "an orange star"


def test_backgrounds_have_clearly_different_mean_colours():
    means = [make_background(name, 64, np.random.default_rng(0)).reshape(-1, 3).mean(0)
             for name in BACKGROUNDS]
    for a, b in itertools.combinations(means, 2):
        assert np.linalg.norm(a - b) > 60


def test_render_object_is_large_and_centred():
    _, mask = render_object(ObjectSpec("circle", "blue"), 64, np.random.default_rng(0), "sky")
    ys, xs = np.nonzero(mask)
    assert mask.mean() > 0.4 and abs(xs.mean() - 31.5) < 2 and abs(ys.mean() - 31.5) < 2


def test_kit_photos_show_the_object_large_and_centred_on_varied_backgrounds():
    for concept in KIT:
        layouts = kit_layouts(concept, n=5, seed=3)
        assert len({bg for bg, _ in layouts}) == len(BACKGROUNDS)
        for bg, box in layouts:
            assert 0.6 <= box[2] - box[0] <= 0.85
            assert abs((box[0] + box[2]) / 2 - 0.5) <= 0.08 + 1e-9
            assert abs((box[1] + box[3]) / 2 - 0.5) <= 0.08 + 1e-9
            _, (mask,) = render(bg, [PlacedObject(concept, box)], 64, np.random.default_rng(0))
            ys, xs = np.nonzero(mask)
            assert mask.mean() > 0.15
            assert abs((xs.min() + xs.max()) / 2 / 63 - 0.5) < 0.1
            assert abs((ys.min() + ys.max()) / 2 / 63 - 0.5) < 0.1
    photos = kit_photos(KIT[0], n=5, size=32, seed=3)
    assert len(photos) == 5 and all(p.size == (32, 32) for p in photos)
    assert photos[0].tobytes() == kit_photos(KIT[0], n=5, size=32, seed=3)[0].tobytes()


def chroma(rgb):
    rgb = np.asarray(rgb, float)
    return rgb / rgb.sum()


def test_kit_looks_are_not_producible_by_the_world():
    """World patterns only darken one colour (same chroma); every kit object mixes two hues."""
    assert len(KIT) >= 5 and len({c.name for c in KIT}) == len(KIT)
    for base in COLOURS.values():
        assert np.abs(chroma(base) - chroma(shade(base, 0.55))).max() < 0.02
    for concept in KIT:
        assert concept.pattern not in PATTERNS and concept.shape in SHAPES
        assert np.abs(chroma(concept.colours[0]) - chroma(concept.colours[1])).max() > 0.15


def test_write_kit_writes_photos_and_concept_file(tmp_path):
    dirs = write_kit(tmp_path, n=2, size=32)
    assert len(dirs) == len(KIT)
    text = (dirs[0] / "concept.txt").read_text()
    assert f"name: {KIT[0].name}" in text and f"class_noun: {KIT[0].class_noun}" in text
    assert sorted(p.name for p in dirs[0].glob("*.png")) == ["photo_0.png", "photo_1.png"]
