"""A frame as the server sent it: the JPEG bytes plus the header's metadata."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # optional extras: imported only by the helpers that need them
    import numpy
    from PIL.Image import Image


@dataclass(frozen=True)
class Frame:
    """One picture. `seq` is the seq of the newest update it shows (a frame shows keystroke k once
    `seq >= k`); `timings` are the server's stage timings in ms (`total_ms`, `queue_ms`, ...)."""

    seq: int
    width: int
    height: int
    seed: int
    steps: int
    format: str  # "jpeg"
    refined: bool
    timings: dict[str, float]
    data: bytes = field(repr=False)
    received_at: float  # time.monotonic() when the image arrived
    latency_ms: float | None  # from sending update `seq` to receiving this frame, if this client sent it
    header: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def from_message(
        cls, header: dict[str, Any], data: bytes, received_at: float, sent_at: float | None
    ) -> Frame:
        return cls(
            seq=int(header["seq"]),
            width=int(header.get("width", 0)),
            height=int(header.get("height", 0)),
            seed=int(header.get("seed", 0)),
            steps=int(header.get("steps", 0)),
            format=str(header.get("format", "jpeg")),
            refined=bool(header.get("refined", False)),
            timings={k: float(v) for k, v in (header.get("timings") or {}).items()},
            data=data,
            received_at=received_at,
            latency_ms=None if sent_at is None else (received_at - sent_at) * 1000.0,
            header=header,
        )

    @property
    def extension(self) -> str:
        return {"jpeg": "jpg", "png": "png"}.get(self.format, self.format)

    def save(self, folder: str | Path) -> Path:
        """Write the image as FOLDER/SEQ.jpg (SEQ-refined.jpg for a refined frame); returns the path."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.seq:06d}{'-refined' if self.refined else ''}.{self.extension}"
        path.write_bytes(self.data)
        return path

    def to_pil(self) -> Image:
        """The decoded picture. Needs Pillow (`pip install 'promptcast-client[pil]'`)."""
        from PIL import Image as PILImage

        img = PILImage.open(io.BytesIO(self.data))
        img.load()
        return img

    def to_numpy(self) -> numpy.ndarray:
        """The picture as a height × width × 3 uint8 RGB array. Needs numpy and Pillow
        (`pip install 'promptcast-client[numpy]'`)."""
        import numpy as np

        return np.asarray(self.to_pil().convert("RGB"))
