"""Turning rendered pixels into bytes for the wire."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode_jpeg(pixels: np.ndarray, quality: int) -> bytes:
    """pixels: (H, W, 3) uint8 RGB."""
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, format="JPEG", quality=quality)
    return out.getvalue()
