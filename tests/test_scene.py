"""A scene photo: only the boxes (grown by the margin) are generated, every pixel beyond the seam is the photo's."""

import io
import re

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionGLIGENPipeline
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from pacgen.app.cli import main
from pacgen.errors import PACGenError
from pacgen.layout import Box, LayoutError
from pacgen.mini.tiny import build_tiny
from pacgen.photos import PhotoError
from pacgen.sampling import PACGenPipeline
from pacgen.scene import composite, fit_scene, load_scene, scene_mask

BOXES = [Box("a dog", (0.25, 0.25, 0.5, 0.5))]
FAST = dict(num_inference_steps=4)


def photo(width=96, height=80, seed=0) -> Image.Image:
    """A noisy photo: any pixel the generator touched would show."""
    return Image.fromarray((np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8))


def pixels(image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def test_beyond_the_seam_every_pixel_is_the_fitted_photo(pipe):
    result = pipe("a dog on grass", boxes=BOXES, scene=photo(), seed=1, scene_margin=4, scene_feather=6, **FAST)
    assert result.settings["scene"] == "blend" and result.scene.size == (64, 64)
    assert np.array_equal(np.asarray(result.scene), np.asarray(fit_scene(photo(), 64, 64)))
    region = scene_mask(BOXES, 64, 64, 4, 6)
    out, scene = pixels(result.images[0]), pixels(result.scene)
    assert np.array_equal(out[region == 0], scene[region == 0])
    assert (region == 0).sum() > 64 * 64 * 0.6  # the box (16 x 16) + 10 px all round leaves most of the photo
    assert np.abs(out - scene)[region == 1].mean() > 20  # inside, the photo's noise was replaced


def test_np_output_and_a_batch_keep_the_photo_too(pipe):
    result = pipe("a dog", boxes=BOXES, scene=photo(), seed=2, num_images=2, output_type="np", **FAST)
    region = scene_mask(BOXES, 64, 64, 8, 8)
    scene = np.asarray(result.scene, np.float32) / 255
    for image in result.images:
        assert np.array_equal(image[region == 0], scene[region == 0])
    assert not np.array_equal(result.images[0], result.images[1])


def test_same_seed_same_image(pipe):
    first, again, other = (pipe("a dog", boxes=BOXES, scene=photo(), seed=s, **FAST).images[0] for s in (3, 3, 4))
    assert np.array_equal(pixels(first), pixels(again))
    assert not np.array_equal(pixels(first), pixels(other))


def test_without_a_scene_nothing_changes(pipe):
    plain = pipe("a dog", boxes=BOXES, seed=5, **FAST)
    assert plain.scene is None and plain.settings["scene"] is None
    assert np.array_equal(pixels(plain.images[0]), pixels(pipe("a dog", boxes=BOXES, seed=5, **FAST).images[0]))


def test_a_concept_box_in_a_scene(pipe, random_concept):
    pipe.load_concept(random_concept(pipe, strength=0.6))
    boxes = [Box("<my dog>", (0.5, 0.5, 1.0, 1.0))]
    kwargs = dict(boxes=boxes, scene=photo(), seed=6, **FAST)
    concept = pipe("a <my dog> on grass", **kwargs)
    phrase = pipe("a dog on grass", boxes=[Box("a dog", boxes[0].xyxy)], scene=photo(), seed=6, **FAST)
    region = scene_mask(boxes, 64, 64, 8, 8)
    out, scene = pixels(concept.images[0]), pixels(concept.scene)
    assert concept.settings["regional"] and np.array_equal(out[region == 0], scene[region == 0])
    assert np.abs(out - pixels(phrase.images[0]))[32:, 32:].mean() > 1  # the concept's LoRA drew the box


def test_the_fit_rule_crops_the_centre_and_keeps_an_already_fitted_photo():
    wide = Image.new("RGB", (200, 100), "red")
    wide.paste((0, 0, 255), (0, 0, 40, 100))  # the centred square is x 50..150: this strip is cropped away
    fitted = fit_scene(wide, 64, 64)
    assert fitted.size == (64, 64) and fitted.getpixel((0, 32)) == (255, 0, 0)
    noisy = fit_scene(photo(), 64, 64)
    assert np.array_equal(np.asarray(fit_scene(noisy, 64, 64)), np.asarray(noisy))


def test_the_mask_is_the_grown_box_and_a_linear_seam():
    mask = scene_mask([Box("x", (0.25, 0.25, 0.5, 0.5))], 64, 64, margin_px=2, feather_px=4)
    row = mask[20]  # box columns 16..31; grown by 2: 14..33; the seam fades over the next 4 on each side
    assert row[14] == 1 and row[33] == 1 and (row[:10] == 0).all() and (row[38:] == 0).all()
    assert 0 < row[37] < row[36] < row[35] < row[34] < 1 and row[10] == row[37]
    scene = np.zeros((64, 64, 3), np.uint8)
    out = composite(np.full((64, 64, 3), 200, np.uint8), Image.fromarray(scene), mask)
    assert (out[mask == 0] == 0).all() and (out[mask == 1] == 200).all()


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_an_animated_or_transparent_scene_is_normalised():
    frames = [Image.new("RGB", (64, 64), colour) for colour in ("red", "blue")]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    assert load_scene(gif.getvalue(), 64, 64).getpixel((5, 5)) == (255, 0, 0)  # the first frame
    clear = load_scene(_png(Image.new("RGBA", (64, 64), (255, 0, 0, 0))), 64, 64)
    assert clear.mode == "RGB" and clear.getpixel((5, 5)) == (255, 255, 255)


@pytest.mark.parametrize("source, message", [
    (b"not an image", "scene photo is not a readable image"),
    (_png(Image.new("RGB", (20, 200))), "scene photo is 20x200; each side must be at least 32 pixels"),
    (_png(Image.new("L", (7000, 6000))), "scene photo is 7000x6000 (42 MP); the limit is 40 MP"),
], ids=["not an image", "too small", "enormous"])
def test_a_bad_scene_is_refused_with_its_message(pipe, source, message):
    with pytest.raises(PhotoError, match=re.escape(message)):
        pipe("a dog", boxes=BOXES, scene=source, **FAST)


def test_boxes_must_lie_on_the_photo_and_a_scene_needs_one(pipe):
    with pytest.raises(LayoutError, match="outside the scene photo"):
        pipe("a dog", boxes=[Box("a dog", (0.5, 0.5, 1.3, 0.9))], scene=photo(), **FAST)
    with pytest.raises(LayoutError, match="needs at least one box"):
        pipe("a dog", scene=photo(), **FAST)


def test_cli_generates_into_a_scene_and_refuses_a_bad_one(tmp_path, capsys):
    path, out = tmp_path / "room.png", tmp_path / "out.png"
    photo().save(path)
    base = ["generate", "--model", "tiny", "--device", "cpu", "--prompt", "a dog", "--num-inference-steps", "2",
            "--seed", "0", "--box", "a dog=0.25,0.25,0.5,0.5", "--scene-margin", "2", "--out", str(out)]
    assert main(base + ["--scene", str(path)]) == 0
    region = scene_mask(BOXES, 64, 64, 2, 8)
    scene = pixels(fit_scene(photo(), 64, 64))
    assert np.array_equal(pixels(Image.open(out))[region == 0], scene[region == 0])
    assert '"scene": "blend"' in Image.open(out).text["pacgen"]
    capsys.readouterr()
    (tmp_path / "bad.jpg").write_text("hello")
    assert main(base + ["--scene", str(tmp_path / "bad.jpg")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: scene photo bad.jpg is not a readable image (UnidentifiedImageError)"]


def test_gligen_inpainting_unet_matches_diffusers_reference(monkeypatch):
    """A 9-channel UNet (GLIGEN's inpainting checkpoint) gets its native conditioning, as diffusers' pipeline gives it:
    inside the box our image is theirs, outside it the photo's.

    The reference draws the photo's encoding and each step's noise from the global RNG; both are pinned here (the
    posterior's mean, and every image's initial noise, as our sampler uses), so the comparison is of the method.
    """
    pipe = PACGenPipeline(build_tiny(in_channels=9))
    comp = pipe.components
    with torch.no_grad():  # random weights barely read the photo's channels: make them count
        comp.unet.conv_in.weight[:, 4:] *= 20
    scene = fit_scene(photo(), 64, 64)
    box = Box("a dog", (0.25, 0.25, 0.75, 0.5))  # on latent cells, as the reference's mask truncates to them
    request = dict(num_inference_steps=6, guidance_scale=7.5, grounding_fraction=0.5, scheduler="ddim")
    ours = pipe("a dog on grass", boxes=[box], scene=scene, seed=7, scene_margin=0, scene_feather=0,
                output_type="np", **request)
    assert ours.settings["scene"] == "inpaint"
    noise = randn_tensor((1, 4, 16, 16), generator=torch.Generator().manual_seed(7))
    monkeypatch.setattr(torch, "randn_like", lambda tensor, **_: noise.clone())
    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", DiagonalGaussianDistribution.mode)
    reference = StableDiffusionGLIGENPipeline(
        vae=comp.vae, text_encoder=comp.text_encoder, tokenizer=comp.tokenizer, unet=comp.unet,
        scheduler=pipe.make_scheduler("ddim"), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    reference.set_progress_bar_config(disable=True)
    theirs = reference(
        "a dog on grass", gligen_phrases=["a dog"], gligen_boxes=[list(box.xyxy)], gligen_inpaint_image=scene,
        gligen_scheduled_sampling_beta=0.5, num_inference_steps=6, guidance_scale=7.5, height=64, width=64,
        latents=noise, output_type="np",
    ).images[0]
    inside = scene_mask([box], 64, 64, 0, 0) == 1
    assert np.abs(ours.images[0] - theirs)[inside].max() <= 0.5 / 255 + 1e-4  # our paste rounds to 8 bits
    assert np.array_equal(ours.images[0][~inside], np.asarray(scene, np.float32)[~inside] / 255)


def test_an_inpainting_unet_without_a_scene_fills_the_whole_image():
    pipe = PACGenPipeline(build_tiny(in_channels=9))
    result = pipe("a dog", boxes=BOXES, seed=0, **FAST)
    assert result.scene is None and result.images[0].size == (64, 64)


def test_concepts_on_the_inpainting_unet(pipe, random_concept):
    """A concept made for the generation UNet loads there with a notice (its layers fit: a sibling of one base);
    one made for the inpainting UNet draws its box."""
    inpainting = PACGenPipeline(build_tiny(in_channels=9))
    inpainting.load_concept(random_concept(pipe, "generation dog"))
    assert "was trained on tiny" in inpainting.transplanted["generation dog"]
    inpainting.unload_concept("generation dog")
    inpainting.load_concept(random_concept(inpainting, strength=0.6))
    boxes = [Box("<my dog>", (0.5, 0.5, 1.0, 1.0))]
    result = inpainting("a <my dog>", boxes=boxes, scene=photo(), seed=0, **FAST)
    region = scene_mask(boxes, 64, 64, 8, 8)
    out, scene = pixels(result.images[0]), pixels(result.scene)
    assert result.settings["scene"] == "inpaint" and np.array_equal(out[region == 0], scene[region == 0])


def test_training_on_the_inpainting_unet_is_refused_with_what_to_do(photos, library):
    from pacgen.training import train_concept

    inpainting = PACGenPipeline(build_tiny(in_channels=9))
    with pytest.raises(PACGenError, match="train on the generation checkpoint"):
        next(train_concept(inpainting, photos, "my dog", "dog", library=library))
    assert library.list() == []
