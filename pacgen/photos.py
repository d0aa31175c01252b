"""The user's photos: decoded, upright, RGB, and checked before any training starts.

Phone photos carry their rotation in EXIF, PNGs may be transparent, scans may be grayscale or CMYK, GIFs may be
animated; all become plain upright RGB here (an animation's first frame), so training sees what the user saw. A
scene photo (`pacgen.scene`) goes through the same `load_photo`.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import PACGenError

MIN_PHOTOS, MAX_PHOTOS = 3, 5
MAX_PIXELS = 40_000_000  # refuse decompression bombs before decoding them


class PhotoError(PACGenError):
    """A photo that cannot be used (a training set or a scene photo); the message names the file."""


PhotoSource = str | Path | bytes | Image.Image


def source_name(source: PhotoSource, fallback: str) -> str:
    """The file name a message shows (never the folder it sits in on the server); `fallback` for bytes."""
    if isinstance(source, (str, Path)):
        return Path(source).name
    filename = getattr(source, "filename", "")
    return Path(filename).name if filename else fallback


def load_photo(source: PhotoSource, index: int = 1, min_side: int = 64, name: str | None = None) -> Image.Image:
    """Decode one photo into upright RGB (transparency composited on white, an animation's first frame).

    `name` is what messages call it; default: its file name, else `image <index>`.
    """
    name = name or source_name(source, f"image {index}")
    try:
        if isinstance(source, Image.Image):
            image = source
        else:
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise PhotoError(
                f"{name} is {width}x{height} ({width * height / 1e6:.0f} MP); the limit is {MAX_PIXELS // 1_000_000} MP"
            )
        if getattr(image, "is_animated", False):
            image.seek(0)
        image.load()
        image = ImageOps.exif_transpose(image)
    except Image.DecompressionBombError:
        raise PhotoError(f"{name} has too many pixels to decode safely (limit {MAX_PIXELS // 1_000_000} MP)") from None
    except PhotoError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise PhotoError(f"{name} is not a readable image ({type(error).__name__})") from None
    if min(image.size) < min_side:
        raise PhotoError(f"{name} is {image.width}x{image.height}; each side must be at least {min_side} pixels")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return image.convert("RGB")


def load_photos(sources: list[PhotoSource], min_side: int = 64) -> list[Image.Image]:
    """Load the 3-5 photos of one object, refusing the set with a message that names the problem."""
    if not MIN_PHOTOS <= len(sources) <= MAX_PHOTOS:
        raise PhotoError(f"{len(sources)} photo(s) given; a concept needs {MIN_PHOTOS} to {MAX_PHOTOS} photos of the object")
    return [load_photo(source, index, min_side) for index, source in enumerate(sources, start=1)]
