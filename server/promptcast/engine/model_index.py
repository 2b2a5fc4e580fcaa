"""Where models come from, checked without importing torch (the CLI uses this to fail fast)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

EMBEDDED_MODEL = Path(__file__).resolve().parents[1] / "models" / "tiny"


class ModelLoadError(Exception):
    """The model could not be loaded; the message says what to do about it."""


def read_model_index(source: str, hint: str | None = None) -> dict[str, Any]:
    """model_index.json of a folder or hub id. `hint`: the command that would fetch it."""
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
                f"model_index.json of {source} is neither in the Hugging Face cache nor "
                f"downloadable ({type(exc).__name__}). Pass a local folder, or fetch the model "
                f"on a machine with internet: {hint or f'huggingface-cli download {source}'}"
            ) from None
    index: dict[str, Any] = json.loads(path.read_text())
    return index
