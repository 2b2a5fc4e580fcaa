"""Where models come from, checked without importing torch (the CLI uses this to fail fast)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

EMBEDDED_MODEL = Path(__file__).resolve().parents[1] / "models" / "tiny"


class ModelLoadError(Exception):
    """The model could not be loaded; the message says what to do about it."""


def read_model_index(source: str) -> dict[str, Any]:
    local = Path(source)
    if local.exists():
        path = local / "model_index.json"
        if not path.is_file():
            raise ModelLoadError(
                f"{source} is not a diffusers model folder: it has no model_index.json"
            )
    else:
        from huggingface_hub import hf_hub_download

        try:
            path = Path(hf_hub_download(source, "model_index.json"))
        except Exception as exc:
            raise ModelLoadError(
                f"could not get model_index.json of {source!r} from the Hugging Face hub "
                f"or its cache ({type(exc).__name__}: {exc}). Pass a local folder, or run "
                f"`huggingface-cli download {source}` on a machine with internet first."
            ) from None
    index: dict[str, Any] = json.loads(path.read_text())
    return index
