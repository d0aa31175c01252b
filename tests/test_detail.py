"""The concept detail pass: a small concept box redrawn enlarged and pasted back, nothing outside it touched."""

import numpy as np
import pytest
import torch
from PIL import Image

from pacgen import detail
from pacgen.app.visitors import generation_cost
from pacgen.app.zerogpu import generation_seconds
from pacgen.layout import Box
from pacgen.mini.tiny import build_tiny
from pacgen.sampling import PACGenPipeline
from pacgen.scene import scene_mask
from pacgen.settings import SampleSettings

SMALL = Box("<my dog>", (0.1, 0.15, 0.4, 0.45))
BESIDE = Box("a red ball", (0.55, 0.5, 0.95, 0.9))


def test_a_window_holds_the_box_with_context_at_the_image_aspect_and_inside_the_image():
    win = detail.window([SMALL], 0, 64, 32)
    x0, y0, x1, y1 = win.pixels
    assert 0 <= x0 <= 0.1 * 64 - 0.2 * 0.3 * 64 + 1 and x1 >= 0.4 * 64 + 0.2 * 0.3 * 64 - 1
    assert abs((x1 - x0) / (y1 - y0) - 2) < 0.25  # the image's 2:1, so the redraw is not stretched
    corner = detail.window([Box("<c>", (0.0, 0.7, 0.3, 1.0))], 0, 64, 64)
    assert corner.pixels[0] == 0 and corner.pixels[3] == 64  # moved inside, not cut off
    bx0, by0, bx1, by1 = corner.box.xyxy
    assert bx0 == 0 and by1 == 1 and 0.5 < bx1 < 1 and 0 < by0 < 0.5


def test_a_box_nearly_as_large_as_the_image_is_not_redrawn():
    assert detail.window([Box("<c>", (0.1, 0.1, 0.9, 0.9))], 0, 64, 64) is None
    assert detail.windows([SMALL, Box("<c>", (0.0, 0.0, 1.0, 0.7)), BESIDE], ["my dog", "c"], 64, 64)[0].index == 0


def test_the_paste_covers_the_box_fades_over_the_context_and_spares_the_other_boxes():
    near = Box("a red ball", (0.42, 0.2, 0.9, 0.6))  # beside the concept's box, inside its window
    win = detail.window([SMALL, near], 0, 64, 64)
    alpha = detail.paste_alpha([SMALL, near], win, 64, 64)
    x0, y0, x1, y1 = win.pixels
    assert alpha[int(0.3 * 64) - y0, int(0.25 * 64) - x0] == 1  # the box's middle: all redraw
    assert alpha[0, 0] == 0 and alpha[-1, -1] == 0  # the window's edge: none
    assert alpha[int(0.3 * 64) - y0, int(0.45 * 64) - x0] == 0  # inside the ball's box: the ball's own pixels


def test_a_phrase_box_holding_the_concept_is_its_scenery_redrawn_and_pasted_with_it():
    table = Box("a wooden table", (0.0, 0.05, 0.6, 0.7))
    win = detail.window([table, SMALL, BESIDE], 1, 64, 64)
    assert [b.label for b in win.scenery] == ["a wooden table"] and win.scenery[0].xyxy[:2] == (0.0, 0.0)
    with_table = detail.paste_alpha([table, SMALL, BESIDE], win, 64, 64)
    assert torch.equal(with_table, detail.paste_alpha([SMALL, BESIDE], detail.window([SMALL, BESIDE], 0, 64, 64),
                                                      64, 64))  # the table cuts nothing out of the paste


@pytest.fixture
def dog(pipe, random_concept):
    pipe.load_concept(random_concept(pipe, strength=0.6))
    return pipe


REQUEST = dict(prompt="a photo of <my dog> and a red ball", boxes=[SMALL, BESIDE], num_inference_steps=8,
               output_type="np", seed=3)


def test_the_pass_changes_the_concepts_box_and_nothing_outside_its_window(dog):
    plain = dog(**REQUEST).images[0]
    redrawn = dog(**REQUEST, detail_strength=0.5).images[0]
    x0, y0, x1, y1 = detail.window([SMALL, BESIDE], 0, 64, 64).pixels
    outside = np.ones(plain.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(plain[outside], redrawn[outside])
    box = redrawn[int(0.15 * 64):int(0.45 * 64), int(0.1 * 64):int(0.4 * 64)]
    assert np.abs(box - plain[int(0.15 * 64):int(0.45 * 64), int(0.1 * 64):int(0.4 * 64)]).mean() > 0.01
    ball = (slice(int(0.5 * 64), int(0.9 * 64)), slice(int(0.55 * 64), int(0.95 * 64)))
    assert np.array_equal(plain[ball], redrawn[ball])  # the phrase's box is never redrawn


def test_a_redrawn_image_k_of_a_batch_equals_a_single_run_with_seed_plus_k(dog):
    # Guidance 1: tiny's random weights under strong guidance blow a batch's last-bit rounding up to visible
    # differences within a few redraw steps; what is checked here is that each image's renoising is its own. A batch
    # runs other CPU kernels than one image (AVX-512 ones differ by 6e-4 after the redraw), a wrong noise by 0.2 on
    # average: equal within half an 8-bit level.
    request = dict(REQUEST, guidance_scale=1.0, detail_strength=0.5)
    batch = dog(**{**request, "seed": 10}, num_images=2)
    single = dog(**{**request, "seed": 11})
    assert np.abs(batch.images[1] - single.images[0]).max() < 0.5 / 255
    again = dog(**{**request, "seed": 11})
    assert np.array_equal(single.images[0], again.images[0])


def test_progress_counts_the_passes_and_a_box_too_large_to_gain_is_left_as_drawn(dog):
    seen = []
    dog(**REQUEST, detail_strength=0.5, callback=lambda step, total: seen.append((step, total)))
    assert seen == [(k, 12) for k in range(1, 13)]  # 8 steps, then int(0.5 * 8) for the one small concept box
    large = dict(REQUEST, boxes=[Box("<my dog>", (0.05, 0.05, 0.95, 0.95))])
    unredrawn = dog(**large, detail_strength=0.5)
    assert np.array_equal(dog(**large).images[0], unredrawn.images[0]) and "detail_s" not in unredrawn.timings


def test_the_pass_runs_with_every_scheduler_and_the_callers_generator(dog):
    for scheduler in ("dpm++", "ddim", "euler", "pndm"):
        image = dog(**REQUEST, detail_strength=0.5, scheduler=scheduler).images[0]
        assert np.isfinite(image).all() and image.std() > 0.01
    request = {k: v for k, v in REQUEST.items() if k != "seed"}
    ours = dog(**request, detail_strength=0.5, generator=torch.Generator().manual_seed(3))
    again = dog(**request, detail_strength=0.5, generator=torch.Generator().manual_seed(3))
    assert np.array_equal(ours.images[0], again.images[0])


def test_row_steps_is_what_the_sampler_runs_and_the_pass_is_priced(dog):
    """Requests are priced by `row_steps` (the cost limit, ZeroGPU's declared duration): with the detail pass it must
    still be what the UNet is handed, at most (a box too large to gain is not redrawn)."""
    rows = []
    hook = dog.components.unet.register_forward_pre_hook(lambda _, args: rows.append(args[0].shape[0]))
    try:
        dog(**REQUEST, detail_strength=0.5, concept_guidance="own")
    finally:
        hook.remove()
    settings = dog.settings(num_inference_steps=8, detail_strength=0.5, concept_guidance="own")
    assert sum(rows) == settings.row_steps([SMALL, BESIDE]) == 8 * 4 + 4 * 4
    default = SampleSettings(width=64, height=64)
    redrawn = SampleSettings(width=64, height=64, detail_strength=0.5)
    assert generation_cost(redrawn, [SMALL], default) > generation_cost(default, [SMALL], default) == 1.0
    assert generation_seconds(redrawn, [SMALL], 0.05) > generation_seconds(default, [SMALL], 0.05)


@pytest.mark.parametrize("in_channels", [4, 9])  # GLIGEN's generation UNet, and its inpainting one
def test_in_a_scene_photo_the_pass_redraws_the_box_and_the_photo_stays_beyond_the_seam(random_concept, in_channels):
    pipe = PACGenPipeline(build_tiny(in_channels=in_channels))
    pipe.load_concept(random_concept(pipe, strength=0.6))
    boxes = [Box("<my dog>", (0.5, 0.5, 0.8, 0.8))]
    scene = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    kwargs = dict(boxes=boxes, scene=scene, seed=2, num_inference_steps=6)
    plain = np.asarray(pipe("a <my dog>", **kwargs).images[0]).astype(int)
    redrawn = np.asarray(pipe("a <my dog>", **kwargs, detail_strength=0.5).images[0]).astype(int)
    region = scene_mask(boxes, 64, 64, 8, 8)
    assert np.array_equal(redrawn[region == 0], np.asarray(scene)[region == 0])
    assert np.abs(redrawn - plain)[32:51, 32:51].mean() > 1


def test_the_redraw_is_prompted_with_its_scenery_and_without_what_lies_beside(dog, monkeypatch, random_concept):
    dog.load_concept(random_concept(dog, name="my cat", identifier="zwx", class_noun="cat", seed=1))
    table, cat = Box("a wooden table", (0.0, 0.05, 0.6, 0.7)), Box("<my cat>", (0.6, 0.05, 0.95, 0.4))
    encoded = []
    original = dog.encode_prompts
    monkeypatch.setattr(dog, "encode_prompts", lambda texts: encoded.append(texts) or original(texts))
    dog("a photo of <my dog> on a wooden table and a red ball, <my cat>", boxes=[table, SMALL, BESIDE, cat],
        num_inference_steps=4, seed=0, detail_strength=0.5)
    windows = encoded[1:]  # after the request's own rows: one call per redrawn box
    assert len(windows) == 2
    assert windows[0] == ["a photo of dog on a wooden table", "a photo of sks dog on a wooden table"]  # base, concept
    assert [t.endswith(("cat", "zwx cat")) for t in windows[1]] == [True, True]
    assert not any(word in t for t in windows[1] for word in ("table", "ball", "dog", "sks"))
