"""Images in and out: client init images to pixels, rendered pixels to bytes for the wire."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# A 4 MB PNG can still unpack to gigabytes; refuse anything this large before decoding it.
MAX_INPUT_PIXELS = 4096 * 4096


class BadImage(ValueError):
    """The client's image cannot be used; the message says why."""


def encode_jpeg(pixels: np.ndarray, quality: int) -> bytes:
    """pixels: (H, W, 3) uint8 RGB."""
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, format="JPEG", quality=quality)
    return out.getvalue()


def decode_image(data: bytes, width: int, height: int) -> np.ndarray:
    """A JPEG or PNG as (height, width, 3) uint8 RGB, resized to the render size the way the
    stock diffusers img2img pipelines resize (stretched, Lanczos)."""
    try:
        image: Image.Image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_INPUT_PIXELS:
            raise BadImage(f"image of {image.width}x{image.height} pixels is too large to decode")
        image = image.convert("RGB")
    except BadImage:
        raise
    except Exception as exc:  # PIL raises many kinds for corrupt data
        raise BadImage(f"image could not be decoded: {exc}") from None
    if image.size != (width, height):
        image = image.resize((width, height), resample=Image.Resampling.LANCZOS)
    return np.asarray(image)
