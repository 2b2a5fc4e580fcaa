"""`promptcast download`: fill the Hugging Face cache with what a preset loads.

Run it on a machine with internet; afterwards `promptcast serve` works with HF_HUB_OFFLINE=1.
Only the files the server loads are fetched (safetensors weights, configs, tokenizers), not
the other formats that hub repositories often carry beside them.
"""

from __future__ import annotations

from pathlib import Path

from promptcast.config import EngineConfig
from promptcast.engine.model_index import ModelLoadError
from promptcast.engine.presets import PRESETS, checkpoint_file

MODEL_FOLDER_FILES = [
    "model_index.json", "scheduler/*", "tokenizer/*", "tokenizer_2/*",
    "text_encoder/*.json", "text_encoder/*.safetensors",
    "text_encoder_2/*.json", "text_encoder_2/*.safetensors",
    "unet/*.json", "unet/*.safetensors", "vae/*.json", "vae/*.safetensors",
]
# Half-precision copies and other formats next to the weights the server loads.
SKIPPED = ["*.fp16.safetensors", "*.bin", "*.ckpt", "*.onnx", "*.msgpack", "*.pb", "*.h5"]


def download(config: EngineConfig) -> list[str]:
    """Fetch everything `config` loads. Returns the local paths, in loading order."""
    from huggingface_hub import hf_hub_download, snapshot_download

    preset = PRESETS[config.preset or "tiny"]
    steps = config.steps or preset.default_steps
    base = config.model or preset.base
    use_lora = preset.lora_file is not None and (config.lora or not preset.lora_optional)
    paths: list[str] = []
    try:
        if base and not Path(base).is_dir():
            patterns = list(MODEL_FOLDER_FILES)
            if preset.unet_file is not None and not use_lora:
                patterns.remove("unet/*.safetensors")  # replaced by the preset's checkpoint
            paths.append(snapshot_download(base, allow_patterns=patterns, ignore_patterns=SKIPPED))
        extra = preset.lora_file if use_lora else preset.unet_file
        if extra is not None:
            repo, pattern = extra
            paths.append(hf_hub_download(repo, checkpoint_file(pattern, preset, steps)))
        tiny = config.vae or (None if config.full_vae else preset.tiny_vae)
        if tiny and not Path(tiny).is_dir():
            paths.append(snapshot_download(tiny, allow_patterns=["*.json", "*.safetensors"],
                                           ignore_patterns=SKIPPED))
    except Exception as exc:
        raise ModelLoadError(f"download failed: {type(exc).__name__}: {exc}") from None
    return paths
