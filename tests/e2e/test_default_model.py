"""The demo the README promises, through a running server: type a prompt, then edit its colour
word, and the last frame shows the new colour. This holds only because the embedded model is
trained (server/promptcast/training); the random-weights model it replaced failed it."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess

import numpy as np
from PIL import Image
from websockets.asyncio.client import connect

from promptcast.training.evaluate import read_scene


def keystrokes(first: str, edited: str) -> list[str]:
    """What a prompt field holds after each keystroke: `first` typed letter by letter, then
    backspaces to where `edited` differs, then the rest of `edited` typed."""
    texts = [first[:i] for i in range(1, len(first) + 1)]
    common = next((i for i, (a, b) in enumerate(zip(first, edited, strict=False)) if a != b),
                  min(len(first), len(edited)))
    # Delete back to the first difference (the cursor is at the end, as in a text field),
    # then type the rest of the new prompt.
    texts += [first[:i] for i in range(len(first) - 1, common - 1, -1)]
    texts += [edited[:i] for i in range(common + 1, len(edited) + 1)]
    return texts


async def last_frames(port: int, texts: list[str], settle_s: float = 1.5) -> dict[int, np.ndarray]:
    """Send `texts` as keystrokes at 20 a second; return the pixels of the newest frame each
    seq received, once the stream has gone quiet."""
    frames: dict[int, np.ndarray] = {}
    async with connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
        assert json.loads(await ws.recv())["type"] == "hello"

        async def receive() -> None:
            while True:
                header = json.loads(await ws.recv())
                if header["type"] == "frame":
                    jpeg = await ws.recv()
                    frames[header["seq"]] = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))

        reader = asyncio.create_task(receive())
        for seq, text in enumerate(texts, start=1):
            await ws.send(json.dumps({"type": "prompt", "seq": seq, "text": text, "seed": 7}))
            await asyncio.sleep(0.05)
        for _ in range(200):  # until the last keystroke's frame is in, then a little more
            if len(texts) in frames:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(settle_s)  # a refined frame, if any, replaces it
        reader.cancel()
    return frames


def test_editing_the_colour_word_changes_the_colour(served: tuple[int, subprocess.Popen[str]]
                                                    ) -> None:
    port, _ = served
    first = "a big red circle on the left on a white background"
    edited = "a big blue circle on the left on a white background"
    typed = keystrokes(first, edited)
    assert typed[len(first) - 1] == first and typed[-1] == edited
    frames = asyncio.run(last_frames(port, typed))
    # The frame the user saw when they had typed the first prompt (the newest one at or
    # before it), and the frame for the edited prompt.
    shown_first = frames[max(s for s in frames if s <= len(first))]
    final = frames[len(typed)]
    assert read_scene(final)["colour"] == "blue", read_scene(final)
    assert read_scene(shown_first)["colour"] == "red", read_scene(shown_first)
    assert read_scene(final)["position"] == "left"


def test_keystrokes_of_an_edit() -> None:
    assert keystrokes("a red", "a blue") == ["a", "a ", "a r", "a re", "a red", "a re", "a r",
                                             "a ", "a b", "a bl", "a blu", "a blue"]
