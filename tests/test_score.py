"""The mini scorer's model-free parts: artifact heuristic, colour localiser, and a tiny identity embedding."""
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pacgen.mini.kit import KIT, kit_layouts, kit_photos, new_concepts
from pacgen.mini.score.evaluate import held_out_scenes, zoom_out
from pacgen.mini.score.fit import train_scorer
from pacgen.mini.score.identity import class_phrase_drawings, colour_bleed, identified, truth_identity
from pacgen.mini.score.metrics import artifact_rate, box_iou, crop, iou, localise
from pacgen.mini.score.net import Scorer
from pacgen.mini.score.report import sample_sheet
from pacgen.mini.world import COLOURS, PlacedObject, render

STEPS, MARGIN = 10, 0.25  # a 10-step scorer (2 s) separates own from other concepts by ~0.5 on average


@pytest.fixture(scope="module")
def scenes():
    return held_out_scenes(12, 32)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_artifact_rate_flags_a_pasted_fill_canvas_not_a_clean_render(scenes):
    rng = random.Random(0)
    for scene in scenes:
        if scene.background == "night":  # drawn as flat as fill: only borders are detectable there
            continue
        clean = artifact_rate(scene.image, [o.box for o in scene.objects], scene.background)
        pasted, boxes = zoom_out(scene, 32, rng, scale=(0.5, 0.6))  # fill covers 64-75% of the canvas
        assert clean < 0.1
        assert artifact_rate(pasted, boxes, scene.background) > 0.4


def test_artifact_rate_counts_only_pixels_outside_the_boxes(scenes):
    scene = next(s for s in scenes if s.background != "night")
    pasted, _ = zoom_out(scene, 32, random.Random(1), scale=(0.5, 0.5))
    assert artifact_rate(pasted, [(0.0, 0.0, 1.0, 1.0)], scene.background) == 0.0


def test_colour_localiser_finds_ground_truth_objects(scenes):
    ious = [box_iou(s.image, o) for s in scenes for o in s.objects]
    assert np.mean(ious) > 0.7 and min(ious) > 0.3
    square_box = (0.2, 0.3, 0.6, 0.7)
    image, _ = render("sand", [PlacedObject(KIT[2], square_box)], 32, np.random.default_rng(0))  # a kit square
    assert box_iou(image, PlacedObject(KIT[2], square_box)) > 0.8
    assert iou(localise(image, square_box), square_box) > 0.7  # colour-blind: any object
    assert localise(image, (0.7, 0.0, 1.0, 0.2), list(KIT[2].colours)) is None  # nothing there


@pytest.mark.slow  # trains the scorer
def test_identity_prefers_the_concepts_own_photos():
    scorer = train_scorer(32, scenes=150, steps=STEPS, log=False)
    photos = {c.name: [crop(p, box) for p, (_, box) in zip(kit_photos(c, 5, 32), kit_layouts(c, 5))] for c in KIT}
    rng, box = np.random.default_rng(0), (0.5, 0.1, 0.9, 0.5)  # smaller and off-centre, unlike the photos
    own, others = [], []
    for concept in KIT:
        crops = [crop(render(bg, [PlacedObject(concept, box)], 32, rng)[0], box) for bg in ("sand", "grass")]
        own.append(scorer.identity(crops, photos[concept.name]))
        others += [scorer.identity(crops, refs) for name, refs in photos.items() if name != concept.name]
    assert np.mean(own) > np.mean(others) + MARGIN  # a seconds-old scorer; the real one separates far better


def test_scorer_round_trips_through_safetensors(tmp_path):
    scorer = train_scorer(32, scenes=20, steps=1, log=False)
    loaded = Scorer.load(scorer.save(tmp_path / "scorer.safetensors"))
    images = [s.image for s in held_out_scenes(3, 32)]
    assert loaded.size == 32 and loaded.background(images) == scorer.background(images)
    assert torch.allclose(loaded.embed(images), scorer.embed(images), atol=1e-2)


def test_sample_sheet_puts_truth_beside_each_generated_image(scenes):
    generated = [Image.new("RGB", (32, 32), "black") for _ in scenes[:8]]
    sheet = sample_sheet(scenes[:8], generated, pairs_per_row=4, tile=64)
    assert sheet.size == (8 * 64, 2 * 64)
    pixels = np.asarray(sheet)
    assert pixels[:, 64:128].mean() < pixels[:, :64].mean()  # column 2 is the (black) generated image


def test_colour_bleed_counts_the_neighbours_colour_not_a_wrong_layout():
    """Bleed is the neighbour's colour taking the concept's face: the concept drawn as itself scores 0, drawn in
    the neighbour's colour nearly 1, and with its two colours swapped (a layout error, which identity counts) 0."""
    concept, box, blue = KIT[1], (0.2, 0.2, 0.8, 0.8), COLOURS["blue"]  # teal and orange halves

    def drawn(obj) -> Image.Image:
        return render("grass", [PlacedObject(obj, box)], 64, np.random.default_rng(0))[0]

    swapped = replace(concept, colours=concept.colours[::-1])
    assert colour_bleed(drawn(concept), concept, box, blue) == 0.0
    assert colour_bleed(drawn(replace(concept, colours=(blue, blue))), concept, box, blue) > 0.8
    assert colour_bleed(drawn(swapped), concept, box, blue) == 0.0
    assert truth_identity(drawn(swapped), concept, box) < truth_identity(drawn(concept), concept, box) - 0.3


def test_identified_picks_the_concept_out_of_a_lineup_of_other_concepts_and_its_class_phrase():
    """A concept drawn as itself is identified; the same shape in its main colour only (the pink smudge of issue 25,
    a plain world star), another concept in its box, or an empty box is not."""
    concept, box = KIT[0], (0.05, 0.1, 0.5, 0.6)
    rivals = tuple(c for c in KIT if c != concept) + class_phrase_drawings(concept.class_noun)

    def drawn(obj) -> Image.Image:
        return render("grass", [PlacedObject(obj, box)], 32, np.random.default_rng(0))[0]

    assert identified(drawn(concept), concept, box, rivals)
    smudge = replace(concept, colours=(concept.colours[0], concept.colours[0]))
    assert not identified(drawn(smudge), concept, box, rivals)
    assert not identified(drawn(KIT[3]), concept, box, rivals)
    assert not identified(render("grass", [], 32, np.random.default_rng(0))[0], concept, box, rivals)
    assert len(class_phrase_drawings("star")) == 18 and {d.shape for d in class_phrase_drawings("star")} == {"star"}


def test_new_concepts_are_kit_like_objects_outside_the_kit_the_same_for_a_seed():
    concepts = new_concepts(6)
    assert concepts == new_concepts(6) and concepts != new_concepts(6, seed=2)
    assert not set(concepts) & set(KIT) and len({c.name for c in concepts}) == 6
    for concept in concepts:
        assert np.linalg.norm(np.subtract(*concept.colours)) >= 150
        render("sand", [PlacedObject(concept, (0.1, 0.1, 0.9, 0.9))], 32, np.random.default_rng(0))


def test_the_shipped_scorer_names_the_shape_of_two_colour_concepts_it_never_saw():
    """Gate 2 of issue 25 ("shape kept") asks the scorer's shape classifier; one trained on one-colour world objects
    alone named the shape of the renderer's own drawing of a kit concept only half the time, so the gate measured
    the classifier. On concepts outside the kit and the training stream, at the benchmark's boxes, it must name the
    shape of the truth, and still of the world's own objects."""
    from pacgen.mini.bench.methods import PAIR_LAYOUTS, PLACEMENTS
    from pacgen.mini.world import BACKGROUNDS, PATTERNS, SHAPES, ObjectSpec

    scorer = Scorer.load(Path(__file__).parents[1] / "assets" / "mini" / "scorer.safetensors")
    boxes = [*PLACEMENTS.values(), *(layout[0] for layout in PAIR_LAYOUTS)]
    rng = np.random.default_rng(5)

    def named(objects) -> float:
        hits = []
        for obj in objects:
            for box in boxes:
                image = render(BACKGROUNDS[rng.integers(len(BACKGROUNDS))], [PlacedObject(obj, box)], 32, rng)[0]
                hits.append(scorer.classify([crop(image, box)])[0]["shape"] == obj.shape)
        return float(np.mean(hits))

    assert named(KIT + new_concepts(12, seed=5)) >= 0.9
    assert named([ObjectSpec(shape, colour, pattern) for shape in SHAPES for colour in list(COLOURS)[::4]
                  for pattern in PATTERNS]) >= 0.95
