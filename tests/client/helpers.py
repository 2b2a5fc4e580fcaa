"""Small things the client tests share."""

from __future__ import annotations

import io

from PIL import Image

SIZE = (64, 64)  # the embedded model's native size: the quickest frames


def png(colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", SIZE, colour).save(buf, format="PNG")
    return buf.getvalue()
