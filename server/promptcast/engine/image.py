"""Images in and out: client init images to pixels, rendered pixels to bytes for the wire."""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from promptcast.engine.model_index import ModelLoadError
from promptcast.engine.transfer import to_host

log = logging.getLogger(__name__)

# A 4 MB PNG can still unpack to gigabytes; refuse anything this large before decoding it.
MAX_INPUT_PIXELS = 4096 * 4096


class BadImage(ValueError):
    """The client's image cannot be used; the message says why."""


def encode_jpeg(pixels: np.ndarray, quality: int) -> bytes:
    """pixels: (H, W, 3) uint8 RGB."""
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, format="JPEG", quality=quality)
    return out.getvalue()


# Rendered frames (B, 3, H, W) uint8 on the render device -> one JPEG per frame.
FrameEncoder = Callable[[torch.Tensor], list[bytes]]


def _first_line(exc: Exception) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def _nvjpeg(device: torch.device, quality: int) -> FrameEncoder | str:
    """torchvision's nvJPEG encoder if it is installed and works on this device; else why not.
    Anything may go wrong here (a torchvision built for another torch fails at import with a
    RuntimeError; one built without nvJPEG fails at the first encode), and none of it may stop
    the server from starting: the CPU encodes instead."""
    try:
        from torchvision.io import encode_jpeg as tv_encode_jpeg
    except Exception as exc:
        return f"torchvision cannot be used: {_first_line(exc)}"

    def encode(frames: torch.Tensor) -> list[bytes]:
        # torchvision encodes on a stream of its own that does not wait for ours: the frames
        # must be finished (decoded, or copied out of a graph's output) before it starts.
        if frames.device.type == "cuda":
            torch.cuda.current_stream(frames.device).synchronize()
        # A list of CUDA tensors is one batched call (torchvision's docs). Its JPEGs stay on the
        # device; they come back in one copy for the batch instead of one per frame.
        encoded = tv_encode_jpeg(list(frames), quality=quality)
        data = to_host(torch.cat(encoded))[0].tobytes()
        ends = np.cumsum([t.numel() for t in encoded]).tolist()
        return [data[start:end] for start, end in zip([0, *ends], ends, strict=False)]

    try:
        encode(torch.zeros((1, 3, 16, 16), dtype=torch.uint8, device=device))
    except Exception as exc:
        return f"torchvision cannot encode on {device}: {_first_line(exc)}"
    return encode


def frame_encoder(where: str, device: torch.device, quality: int) -> FrameEncoder | None:
    """Who encodes frames to JPEG (--jpeg-encode): "device": the engine, right after decoding,
    on the render device (nvJPEG on CUDA: about 0.2 ms a 512 px frame on an H200, against
    2.6 ms on a CPU core; on a CPU device, the engine thread); "cpu": the server, on a worker
    thread beside the next render (None here); "auto": the device where it is a GPU with
    nvJPEG, else the CPU."""
    if where not in ("auto", "device", "cpu"):
        raise ModelLoadError(f"--jpeg-encode must be auto, device or cpu, not {where!r}")
    if where == "cpu" or (where == "auto" and device.type != "cuda"):
        return None
    if device.type == "cuda":
        encoder = _nvjpeg(device, quality)
        if not isinstance(encoder, str):
            return encoder
        if where == "device":
            raise ModelLoadError(f"--jpeg-encode device needs torchvision with nvJPEG ({encoder}); "
                                 "use auto or cpu")
        log.info("JPEG frames are encoded on the CPU: %s", encoder)
        return None

    def encode_on_cpu(frames: torch.Tensor) -> list[bytes]:
        return [encode_jpeg(f.permute(1, 2, 0).numpy(), quality) for f in frames]

    return encode_on_cpu


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
    return np.array(image)  # writable (torch warns when it wraps a read-only array)


class DecodedImages:
    """img2img init images decoded beside the engine thread, not on it.

    A creative tool's live canvas sends a new image with nearly every frame, and decoding one
    (PNG or JPEG, resized to the render size) took 1.2-3.6 ms at 512 px on this project's CPU,
    15-30 ms from 1024 px: time the engine thread, which feeds the GPU, would spend on it per
    frame. `start` (from the event loop, as an image arrives) decodes on a worker thread; the
    engine thread's `get` takes the result, waiting for it if it is not done, and decodes itself
    only an image nobody started (or whose decode was dropped). Thread-safe. The newest
    `capacity` images are kept, and an older one's decode that has not begun is cancelled: a
    flood of images queues no more than `capacity` decodes (where only the jobs that run need
    theirs: a superseded image is one nobody will ask for)."""

    def __init__(self, capacity: int = 8, workers: int = 2) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        # (image bytes, width, height) -> its decode: pixels, or the BadImage it raised
        self._decodes: OrderedDict[tuple[bytes, int, int], Future[np.ndarray]] = OrderedDict()
        self._workers = ThreadPoolExecutor(workers, thread_name_prefix="promptcast-image")

    def start(self, data: bytes, width: int, height: int) -> Future[np.ndarray]:
        """Begin decoding `data` for a `width` x `height` render, unless it is already begun;
        the decode either way."""
        key = (data, width, height)
        with self._lock:
            if key in self._decodes:
                self._decodes.move_to_end(key)
                return self._decodes[key]
            decode = self._decodes[key] = self._workers.submit(decode_image, data, width, height)
            while len(self._decodes) > self._capacity:
                _, oldest = self._decodes.popitem(last=False)
                oldest.cancel()  # if it has not begun
        return decode

    def get(self, data: bytes, width: int, height: int) -> np.ndarray:
        """`decode_image(data, width, height)`: what `start` made of it, or decoded now."""
        with self._lock:
            decode = self._decodes.get((data, width, height))
        if decode is not None:
            try:
                return decode.result()
            except CancelledError:  # dropped (by newer images) after it was looked up
                pass
            except BadImage as exc:
                # A fresh exception each time: the future raises the one it holds, and every
                # raise adds its frames to that object's traceback, so a session that keeps a
                # bad image and types on would keep every failed render's frames (and their
                # tensors) alive.
                raise BadImage(str(exc)) from None
        return decode_image(data, width, height)
