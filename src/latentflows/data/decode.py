"""One image -> the (size, size, 3) uint8 array every source stores: the one decoding path, so
that all images are prepared alike (orientation, RGB, centre crop, LANCZOS resize)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, TypeError)  # an unreadable image


def to_rgb_array(image: Image.Image, size: int) -> np.ndarray:
    """Any Pillow image -> (size, size, 3) uint8: orientation fixed, RGB, centre crop, LANCZOS.

    The one decoding path of every source, so that all images are prepared alike;
    transparency is composited on white and 16-bit or float greyscale is rescaled.

    Args:
        image: an open Pillow image.
        size: the side of the square output.

    Example:
        >>> image = Image.new("L", (8, 4), 128)
        >>> array = to_rgb_array(image, 2)
        >>> array.shape, array.dtype.name, array[0, 0].tolist()
        ((2, 2, 3), 'uint8', [128, 128, 128])
    """
    if image.format == "JPEG" and max(image.size) > 4 * size:
        image.draft("RGB", (2 * size, 2 * size))  # let libjpeg decode a downscaled image
    image = ImageOps.exif_transpose(image)
    image = _as_rgb(image)
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.resize((size, size), Image.Resampling.LANCZOS, box=(left, top, left + side, top + side))
    return np.asarray(image, dtype=np.uint8)


def _as_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit or float greyscale: Pillow's convert("RGB") clips, so rescale to 8 bits first.
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array, "L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def decode_image(data: bytes | str | Path, size: int) -> np.ndarray:
    """Decode an encoded image (bytes or a file path) with ``to_rgb_array``.

    Args:
        data: the encoded image's bytes, or the path of an image file.
        size: the side of the square output.

    Example:
        >>> buffer = io.BytesIO()
        >>> Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(buffer, "PNG")
        >>> decode_image(buffer.getvalue(), 2)[0, 0].tolist()   # fully transparent -> white
        [255, 255, 255]
    """
    source = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    with Image.open(source) as image:
        return to_rgb_array(image, size)
