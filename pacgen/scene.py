"""A scene photo: the user's own picture, into whose boxes generation puts concepts and phrases.

Three rules, each defined once here and used by the sampler, the CLI and the app alike:

- **Fitting** (`fit_scene`): the largest centred region of the photo with the output's aspect ratio, resized to
  the output size with Lanczos. An image already at the output size is left as it is, so a canvas that shows the
  fitted photo and the generator agree pixel for pixel.
- **The generated region** (`scene_mask`): every box grown by `scene_margin` pixels is generated; beyond that the
  mask fades to 0 over `scene_feather` pixels (the seam). Distances are Chebyshev, so regions stay rectangles.
- **The paste** (`composite`): the generated image inside the mask, the fitted photo outside it, blended across the
  seam in 8-bit pixels; where the mask is 0 every pixel is the photo's, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .layout import TOLERANCE, Box, LayoutError
from .photos import PhotoSource, load_photo, source_name

MAX_SIDE_SHRINK = 2  # a photo may be enlarged at most this much to fill the output: smaller sides are refused
BLEND, INPAINT = "blend", "inpaint"  # how the photo steers denoising: blended latents, or GLIGEN's inpainting UNet


def fit_scene(image: Image.Image, width: int, height: int) -> Image.Image:
    """The photo as the generator uses it: centre-cropped to the output's aspect ratio, then resized (Lanczos)."""
    w, h = image.size
    scale = max(width / w, height / h)
    crop_w, crop_h = width / scale, height / scale
    left, top = (w - crop_w) / 2, (h - crop_h) / 2
    return image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS,
                                       box=(left, top, left + crop_w, top + crop_h))


def load_scene(source: PhotoSource, width: int, height: int) -> Image.Image:
    """Decode, check and fit a scene photo, exactly as training photos are decoded and checked (`load_photo`).

    A side shorter than half the output's (at most 256 pixels, as for training photos) is refused: enlarged more
    than that, the photo would be a blur the boxes' content does not match.
    """
    name = f"scene photo {source_name(source, '')}".strip()
    min_side = min(min(width, height) // MAX_SIDE_SHRINK, 256)
    return fit_scene(load_photo(source, min_side=min_side, name=name), width, height)


def check_scene_boxes(boxes: list[Box]) -> None:
    """A scene needs boxes (they are where it changes), and every box must lie on the photo."""
    if not boxes:
        raise LayoutError("a scene photo needs at least one box: the boxes are where it is generated")
    for index, box in enumerate(boxes, start=1):
        values = box.xyxy
        if len(values) == 4 and all(isinstance(v, (int, float)) for v in values) and any(
                v < -TOLERANCE or v > 1 + TOLERANCE for v in values):
            raise LayoutError(f"box {index} ('{box.label}'): coordinates {values} are outside the scene photo "
                              "(they must be in [0, 1] of the fitted photo)")


def scene_mask(boxes: list[Box], width: int, height: int, margin_px: float, feather_px: float) -> np.ndarray:
    """The generated region, (height, width) float32 in [0, 1]: 1 within `margin_px` of a box, fading linearly to 0
    over the next `feather_px` pixels, 0 beyond. Measured from pixel centres to the box edges."""
    xs = np.arange(width, dtype=np.float32) + 0.5
    ys = np.arange(height, dtype=np.float32) + 0.5
    mask = np.zeros((height, width), np.float32)
    for box in boxes:
        x0, y0, x1, y1 = box.xyxy
        dx = np.maximum(np.maximum(x0 * width - xs, xs - x1 * width), 0)
        dy = np.maximum(np.maximum(y0 * height - ys, ys - y1 * height), 0)
        distance = np.maximum(dy[:, None], dx[None, :])
        if feather_px > 0:
            region = np.clip((margin_px + feather_px - distance) / feather_px, 0, 1)
        else:
            region = (distance <= margin_px).astype(np.float32)
        mask = np.maximum(mask, region)
    return mask


def latent_mask(mask: np.ndarray, factor: int) -> torch.Tensor:
    """The pixel mask at latent resolution: each latent cell takes the mean of its `factor` x `factor` pixels, so a
    cell the generated region only touches is partly generated and the latents fade as the pixels do."""
    height, width = mask.shape
    cells = mask.reshape(height // factor, factor, width // factor, factor).mean(axis=(1, 3))
    return torch.from_numpy(cells)


def composite(generated: np.ndarray, scene: Image.Image, mask: np.ndarray) -> np.ndarray:
    """The pixel-space paste, (H, W, 3) uint8: `generated` (uint8) where the mask is 1, the scene where it is 0,
    blended across the seam; outside the mask every pixel is the scene's exactly."""
    photo = np.asarray(scene.convert("RGB"))
    weight = mask[..., None]
    blended = np.rint(photo + weight * (generated.astype(np.float32) - photo)).clip(0, 255).astype(np.uint8)
    return np.where(weight > 0, blended, photo)


@dataclass
class SceneGuide:
    """What denoising needs of a scene photo: its latents, the latent region to generate, and each image's noise.

    BLEND (any UNet; diffusers' StableDiffusionInpaintPipeline does this for 4-channel UNets): after every step the
    latents outside the region become the photo's, noised to the level of the next step (clean after the last).
    INPAINT (GLIGEN's 9-channel inpainting UNet, as diffusers' StableDiffusionGLIGENPipeline conditions it): the
    photo's latents outside the region and the keep-mask are concatenated to every UNet input, and before every
    step the latents outside the region become the photo's, noised to that step's level.
    """

    mode: str  # BLEND or INPAINT
    latents: torch.Tensor  # (1, C, h, w): the fitted photo's (zeros: an inpainting UNet without a photo)
    noise: torch.Tensor  # (n, C, h, w): each image's initial noise, so the photo is aged by the image's own seed
    generate: torch.Tensor  # (h, w): 1 where generated; soft at the seam in BLEND, 0 or 1 in INPAINT

    def noised(self, scheduler, t: torch.Tensor) -> torch.Tensor:
        return scheduler.add_noise(self.latents.expand_as(self.noise), self.noise, t.reshape(1))

    def __post_init__(self) -> None:
        self.keep = 1 - self.generate  # computed once: every step reads it
        # INPAINT's extra input channels: the photo's kept latents, then the keep-mask.
        self.extra = torch.cat((self.latents * self.keep, self.keep[None, None]), dim=1)

    def model_input(self, model_in: torch.Tensor) -> torch.Tensor:
        """The UNet's input for this step: INPAINT adds its extra channels to every row, BLEND changes nothing."""
        if self.mode != INPAINT:
            return model_in
        return torch.cat((model_in, self.extra.expand(len(model_in), -1, -1, -1)), dim=1)

    def before_step(self, latents: torch.Tensor, scheduler, t: torch.Tensor) -> torch.Tensor:
        if self.mode != INPAINT:
            return latents
        return self.noised(scheduler, t) * self.keep + latents * (1 - self.keep)

    def after_step(self, latents: torch.Tensor, scheduler, next_t: torch.Tensor | None) -> torch.Tensor:
        if self.mode != BLEND:
            return latents
        photo = self.latents.expand_as(latents) if next_t is None else self.noised(scheduler, next_t)
        return self.generate * latents + self.keep * photo
