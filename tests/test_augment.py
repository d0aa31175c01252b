import random

import numpy as np
import pytest
from PIL import Image

from pacgen.augment import (AugmentConfig, augment, augment_many, border_colour, object_box, preview_grid, source,
                            square)
from pacgen.errors import PACGenError
from pacgen.settings import TrainSettings


def gradient_photo(size=64):
    x = np.linspace(0, 255, size, dtype=np.uint8)
    return Image.fromarray(np.stack([np.tile(x, (size, 1)), np.tile(x[:, None], (1, size)), np.full((size, size), 90, np.uint8)], -1))


def test_zoom_out_pastes_the_photo_exactly_where_the_mask_says():
    config = AugmentConfig(zoom_out_prob=1.0, zoom_in_prob=0.0, flip_prob=0.0, zoom_out_scale=(0.3, 0.6))
    photo = gradient_photo()
    for seed in range(20):
        sample = augment(photo, 64, config, random.Random(seed))
        ys, xs = np.nonzero(sample.mask)
        side = xs.max() - xs.min() + 1
        assert side == ys.max() - ys.min() + 1  # a square region
        assert 0.3 * 64 - 1 <= side <= 0.6 * 64 + 1 and sample.kind == "zoom-out"
        x0, y0, x1, y1 = (round(v * 64) for v in sample.box)
        assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        pixels = np.asarray(sample.image)
        expected = np.asarray(photo.resize((side, side), Image.Resampling.LANCZOS))
        assert np.array_equal(pixels[y0:y1, x0:x1], expected)
        assert (pixels[~sample.mask] == border_colour(photo)).all()


def test_zoom_in_crops_and_keeps_the_whole_canvas_in_the_loss():
    config = AugmentConfig(zoom_out_prob=0.0, zoom_in_prob=1.0, flip_prob=0.0)
    sample = augment(gradient_photo(), 64, config, random.Random(0))
    assert sample.kind == "zoom-in" and sample.mask.all()
    assert config.zoom_in_scale[0] <= sample.scale <= config.zoom_in_scale[1]


def edge_energy(image):
    pixels = np.asarray(image, np.float32)
    return np.abs(np.diff(pixels, axis=1)).mean() + np.abs(np.diff(pixels, axis=0)).mean()


def test_a_close_up_shows_the_photos_own_detail_not_an_enlarged_thumbnail():
    # A phone photo holds far more detail than the training size: a zoom-in is cut from it, so the concept does not
    # learn the blur of an enlarged thumbnail as part of its look (one-pixel detail at the training size).
    blocks = np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    photo = Image.fromarray(blocks).resize((512, 512), Image.Resampling.NEAREST)
    config = AugmentConfig(zoom_out_prob=0.0, zoom_in_prob=1.0, zoom_in_scale=(1.5, 1.6))
    thumbnail = square(photo, 64)
    close_ups = np.mean([edge_energy(s.image) for s in augment_many([photo], 10, 64, config)])
    enlarged = np.mean([edge_energy(augment(thumbnail, 64, config, random.Random(k)).image) for k in range(10)])
    assert close_ups >= 0.8 * edge_energy(thumbnail) > enlarged


def test_the_photo_samples_are_cut_from_is_bounded_in_size():
    assert source(gradient_photo(3000), 64).size == (256, 256)  # 4x the training size: detail, not a 9 MP resize
    assert source(gradient_photo(100), 64).size == (100, 100)
    assert source(gradient_photo(40), 64).size == (64, 64)


def test_flip_mirrors_the_photo():
    config = AugmentConfig(zoom_out_prob=0.0, zoom_in_prob=0.0, flip_prob=1.0)
    photo = gradient_photo()
    sample = augment(photo, 64, config, random.Random(0))
    assert np.array_equal(np.asarray(sample.image), np.asarray(photo)[:, ::-1])


def test_photos_are_mirrored_only_when_the_setting_asks():
    # A mirrored two-colour split or logo is another object: by default no sample is a mirror image.
    photo = gradient_photo()
    original = np.asarray(photo)

    def mirrored(settings):
        config = settings.augmentation()
        config.zoom_out_prob = config.zoom_in_prob = 0.0  # every sample is the photo, so a flip shows
        return [np.array_equal(np.asarray(s.image), original[:, ::-1])
                for s in augment_many([photo], 40, 64, config, seed=1)]

    assert not any(mirrored(TrainSettings()))
    assert 0 < sum(mirrored(TrainSettings(mirror_photos=True))) < 40


def test_caption_modifiers_follow_scale_only_when_enabled():
    on = AugmentConfig(zoom_out_prob=1.0, zoom_in_prob=0.0, zoom_out_scale=(0.3, 0.4), caption_modifiers=True)
    off = AugmentConfig(zoom_out_prob=1.0, zoom_in_prob=0.0, zoom_out_scale=(0.3, 0.4))
    assert augment(gradient_photo(), 64, on, random.Random(0)).modifier == "far away"
    assert augment(gradient_photo(), 64, off, random.Random(0)).modifier == ""


def test_many_samples_are_reproducible_and_mixed():
    photos = [gradient_photo(), gradient_photo().rotate(90), gradient_photo().rotate(180)]
    first = augment_many(photos, 30, 64, AugmentConfig(), seed=3)
    again = augment_many(photos, 30, 64, AugmentConfig(), seed=3)
    assert [s.box for s in first] == [s.box for s in again]
    assert {s.kind for s in first} == {"zoom-out", "zoom-in", "original"}
    assert preview_grid(first[:8]).size == (4 * 64, 2 * 64)


def test_strength_zero_is_plain_dreambooth_and_bad_ranges_are_refused():
    assert {s.kind for s in augment_many([gradient_photo()] * 3, 10, 64, AugmentConfig.with_strength(0))} == {"original"}
    with pytest.raises(PACGenError, match="zoom_out_scale"):
        AugmentConfig(zoom_out_scale=(0.8, 0.2)).validate()


def object_photo(size, box):
    """A red rectangle on grass-like texture: an object whose box is known."""
    rng = np.random.default_rng(0)
    pixels = (np.array([70.0, 150, 55]) + rng.normal(0, 6, (size, size, 1))).clip(0, 255)
    x0, y0, x1, y1 = (round(v * size) for v in box)
    pixels[y0:y1, x0:x1] = (220, 30, 40)
    return Image.fromarray(pixels.astype(np.uint8))


def test_the_object_is_found_in_each_photo_and_followed_through_every_sample():
    # Training grounds each sample with its object's box, as Compose grounds a concept with the box drawn for it.
    box = (0.25, 0.3, 0.7, 0.8)
    photo = object_photo(256, box)
    assert np.allclose(object_box(photo), box, atol=0.02)
    samples = augment_many([photo], 60, 64, AugmentConfig(flip_prob=0.5), seed=2)
    assert {s.kind for s in samples} == {"zoom-out", "zoom-in", "original"}
    for sample in samples:
        pixels = np.asarray(sample.image).astype(int)
        ys, xs = np.nonzero((pixels[..., 0] > 150) & (pixels[..., 1] < 100))
        seen = (xs.min() / 64, ys.min() / 64, (xs.max() + 1) / 64, (ys.max() + 1) / 64)
        assert np.allclose(sample.object_box, seen, atol=2 / 64), (sample.kind, sample.object_box, seen)


def test_the_object_is_found_on_every_background_of_the_toy_world():
    from pacgen.mini.kit import KIT, kit_layouts, kit_photos

    for concept in KIT:
        for (_, box), photo in zip(kit_layouts(concept, 5), kit_photos(concept, 5, 64)):
            assert np.allclose(object_box(photo), box, atol=0.08), concept.name


def test_a_photo_with_no_object_apart_from_its_background_is_grounded_whole():
    texture = object_photo(128, (0, 0, 0, 0))  # grass only
    assert object_box(texture) == (0.0, 0.0, 1.0, 1.0)
    assert object_box(Image.new("RGB", (64, 64), "red")) == (0.0, 0.0, 1.0, 1.0)  # an object filling the frame
