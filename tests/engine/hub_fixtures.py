"""A fake-but-real Hugging Face hub cache holding tiny versions of the repos promptcast presets use.

Presets name hub repos ("stabilityai/sd-turbo", "ByteDance/SDXL-Lightning", ...), and users load
them by repo id through the Hugging Face cache. Tests cannot download the real weights (gigabytes,
and no internet), so `build_hub_cache` writes tiny random models with the same layout, class names,
scheduler configs and file names as the real repos, laid out exactly as huggingface_hub stores a
downloaded repo:

    root/models--{org}--{name}/refs/main                  -> COMMIT
    root/models--{org}--{name}/snapshots/COMMIT/<files>

With HF_HUB_CACHE=root and HF_HUB_OFFLINE=1 (both read when huggingface_hub is imported, so set
them before importing it or diffusers), the code paths users hit work unchanged:
`StableDiffusionPipeline.from_pretrained(repo_id)`, `hf_hub_download(repo_id, filename)`,
`AutoencoderTiny.from_pretrained(repo_id)`, `pipe.load_lora_weights(repo_id, weight_name=...)`.

Real caches store files as symlinks into blobs/; plain files in the snapshot folder resolve the
same way offline. Every model is seeded, so the cache is the same on every build.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import peft
import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderTiny,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LatentConsistencyModelPipeline,
    LCMScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.utils import convert_state_dict_to_diffusers
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from promptcast.engine.model_index import EMBEDDED_MODEL

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD_TURBO = "stabilityai/sd-turbo"
SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
SDXL_TURBO = "stabilityai/sdxl-turbo"
LCM_DREAMSHAPER = "SimianLuo/LCM_Dreamshaper_v7"
SDXL_LIGHTNING = "ByteDance/SDXL-Lightning"
LCM_LORA_SD15 = "latent-consistency/lcm-lora-sdv1-5"
LCM_LORA_SDXL = "latent-consistency/lcm-lora-sdxl"
TAESD = "madebyollin/taesd"
TAESDXL = "madebyollin/taesdxl"

LCM_LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
# SDXL-Lightning's full UNets by step count; as in the real repo, the 1-step one predicts x0
# (the denoised sample) and is named for it.
LIGHTNING_UNET_FILES = {
    1: "sdxl_lightning_1step_unet_x0.safetensors",
    **{k: f"sdxl_lightning_{k}step_unet.safetensors" for k in (2, 4, 8)},
}
LIGHTNING_LORA_FILES = {k: f"sdxl_lightning_{k}step_lora.safetensors" for k in (2, 4, 8)}


# Every repo in the cache, with the files tests reach for (diffusers folders: their model_index.json).
REPOS: dict[str, tuple[str, ...]] = {
    SD15: ("model_index.json",),
    SD_TURBO: ("model_index.json",),
    SDXL_BASE: ("model_index.json",),
    SDXL_TURBO: ("model_index.json",),
    LCM_DREAMSHAPER: ("model_index.json",),
    SDXL_LIGHTNING: (*LIGHTNING_UNET_FILES.values(), *LIGHTNING_LORA_FILES.values()),
    LCM_LORA_SD15: (LCM_LORA_WEIGHT_NAME,),
    LCM_LORA_SDXL: (LCM_LORA_WEIGHT_NAME,),
    TAESD: ("config.json", "diffusion_pytorch_model.safetensors"),
    TAESDXL: ("config.json", "diffusion_pytorch_model.safetensors"),
}

# The beta schedule every Stable Diffusion scheduler config on the hub uses.
SD_BETAS: dict[str, Any] = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)

# SD2 (sd-turbo): 64-wide text features, per-block head dims, linear projections in attention.
SD2_UNET: dict[str, Any] = dict(cross_attention_dim=64, attention_head_dim=(2, 4), use_linear_projection=True)

# SDXL, shaped like diffusers' own SDXL test dummy: two text encoders (32 + 32 = 64-wide
# cross attention), pooled text (32) plus six size/crop numbers embedded in 8 each.
SDXL_UNET: dict[str, Any] = dict(
    cross_attention_dim=64, attention_head_dim=(2, 4), use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
    projection_class_embeddings_input_dim=32 + 6 * 8,
)


def commit_hash(repo_id: str) -> str:
    """A fixed 40-hex-digit "commit" per repo, as refs/main holds."""
    return hashlib.sha1(repo_id.encode()).hexdigest()


def put_in_cache(root: Path, repo_id: str) -> Path:
    """Create repo_id's cache entry under root, point refs/main at it, return its snapshot folder."""
    repo_dir = root / ("models--" + repo_id.replace("/", "--"))
    commit = commit_hash(repo_id)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


def make_tokenizer(**overrides: Any) -> CLIPTokenizer:
    # The real CLIP tokenizer files, borrowed from the embedded model.
    return CLIPTokenizer.from_pretrained(EMBEDDED_MODEL, subfolder="tokenizer", **overrides)


def make_text_encoder(
    seed: int, hidden_size: int = 32, projection_dim: int | None = None
) -> CLIPTextModel | CLIPTextModelWithProjection:
    """A 2-layer CLIP text encoder; with projection_dim, SDXL's second (pooled, projected) one."""
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=49408, hidden_size=hidden_size, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        projection_dim=projection_dim or 512,
    )
    return CLIPTextModelWithProjection(config) if projection_dim else CLIPTextModel(config)


def make_unet(seed: int, **overrides: Any) -> UNet2DConditionModel:
    """An SD1.5-shaped UNet (32-wide text features); overrides reshape it as SD2 or SDXL."""
    torch.manual_seed(seed)
    config: dict[str, Any] = dict(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), norm_num_groups=32, cross_attention_dim=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=4,
    )
    return UNet2DConditionModel(**{**config, **overrides})


def make_vae(seed: int, **overrides: Any) -> AutoencoderKL:
    # Four blocks: the 8x downscale of every Stable Diffusion VAE.
    torch.manual_seed(seed)
    config: dict[str, Any] = dict(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32,) * 4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=32, layers_per_block=1,
    )
    return AutoencoderKL(**{**config, **overrides})


def make_tiny_vae(seed: int) -> AutoencoderTiny:
    torch.manual_seed(seed)
    return AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8), latent_channels=4
    )


def save_tiny_vae(root: Path, repo_id: str, seed: int) -> None:
    folder = put_in_cache(root, repo_id)
    make_tiny_vae(seed).save_pretrained(folder)
    # diffusers records a block_out_channels it does not accept back (a warning on every load);
    # the real repos' config.json has no such key.
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    del config["block_out_channels"]
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def make_lora(unet: UNet2DConditionModel, seed: int) -> dict[str, torch.Tensor]:
    """A rank-4 attention LoRA for unet, in diffusers format, whose fusing visibly changes outputs."""
    torch.manual_seed(seed)
    unet = copy.deepcopy(unet)  # the caller's UNet, saved as a base model, stays clean
    unet.add_adapter(peft.LoraConfig(
        r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_q", "to_k", "to_v", "to_out.0"],
    ))
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:  # zero-initialised by peft: the LoRA would be a no-op
                param.copy_(torch.randn_like(param) * 0.1)
    return convert_state_dict_to_diffusers(peft.utils.get_peft_model_state_dict(unet))


def save_sd_repo(
    root: Path, repo_id: str, seed: int, scheduler: Any, *, text_hidden: int = 32,
    unet_overrides: dict[str, Any] | None = None, tokenizer_overrides: dict[str, Any] | None = None,
    pipeline_class: type = StableDiffusionPipeline,
) -> UNet2DConditionModel:
    """An SD 1.x/2.x-shaped diffusers folder, without a safety checker; returns its UNet."""
    unet = make_unet(seed, **(unet_overrides or {}))
    pipe = pipeline_class(
        vae=make_vae(seed + 1), text_encoder=make_text_encoder(seed + 2, text_hidden),
        tokenizer=make_tokenizer(**(tokenizer_overrides or {})), unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(put_in_cache(root, repo_id))
    return unet


def save_sdxl_repo(root: Path, repo_id: str, seed: int, scheduler: Any) -> UNet2DConditionModel:
    """An SDXL-shaped diffusers folder (two text encoders); returns its UNet."""
    unet = make_unet(seed, **SDXL_UNET)
    pipe = StableDiffusionXLPipeline(
        vae=make_vae(seed + 1, scaling_factor=0.13025, force_upcast=False),
        text_encoder=make_text_encoder(seed + 2),
        text_encoder_2=make_text_encoder(seed + 3, projection_dim=32),
        # The real SDXL's second tokenizer pads with "!", like SD2's.
        tokenizer=make_tokenizer(), tokenizer_2=make_tokenizer(pad_token="!"),
        unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True,
    )
    pipe.save_pretrained(put_in_cache(root, repo_id))
    return unet


def build_hub_cache(root: Path) -> Path:
    """Write every repo of REPOS as a hub cache under root; use the result as HF_HUB_CACHE."""
    root = Path(root)
    sd15_unet = save_sd_repo(
        root, SD15, 100, PNDMScheduler(skip_prk_steps=True, steps_offset=1, **SD_BETAS),
    )
    save_sd_repo(
        root, SD_TURBO, 200,
        EulerDiscreteScheduler(
            timestep_spacing="trailing", prediction_type="epsilon", steps_offset=1, **SD_BETAS
        ),
        text_hidden=64, unet_overrides=SD2_UNET, tokenizer_overrides=dict(pad_token="!"),
    )
    sdxl_unet = save_sdxl_repo(
        root, SDXL_BASE, 300,
        EulerDiscreteScheduler(timestep_spacing="leading", steps_offset=1, **SD_BETAS),
    )
    save_sdxl_repo(
        root, SDXL_TURBO, 400,
        EulerAncestralDiscreteScheduler(timestep_spacing="trailing", steps_offset=1, **SD_BETAS),
    )
    # The real repo's model_index.json names LatentConsistencyModelPipeline; it loads as SD too.
    save_sd_repo(
        root, LCM_DREAMSHAPER, 500,
        LCMScheduler(original_inference_steps=50, set_alpha_to_one=True, steps_offset=1, **SD_BETAS),
        unet_overrides=dict(time_cond_proj_dim=32), pipeline_class=LatentConsistencyModelPipeline,
    )

    # SDXL-Lightning: loose files only. Full UNets load the model card's way, into
    # UNet2DConditionModel.from_config(<SDXL base unet config>); LoRAs go on the SDXL base.
    lightning = put_in_cache(root, SDXL_LIGHTNING)
    for steps, filename in LIGHTNING_UNET_FILES.items():
        save_file(make_unet(600 + steps, **SDXL_UNET).state_dict(), lightning / filename)
    for steps, filename in LIGHTNING_LORA_FILES.items():
        StableDiffusionXLPipeline.save_lora_weights(
            lightning, unet_lora_layers=make_lora(sdxl_unet, 650 + steps), weight_name=filename,
        )

    StableDiffusionPipeline.save_lora_weights(
        put_in_cache(root, LCM_LORA_SD15), unet_lora_layers=make_lora(sd15_unet, 700),
        weight_name=LCM_LORA_WEIGHT_NAME,
    )
    StableDiffusionXLPipeline.save_lora_weights(
        put_in_cache(root, LCM_LORA_SDXL), unet_lora_layers=make_lora(sdxl_unet, 800),
        weight_name=LCM_LORA_WEIGHT_NAME,
    )

    save_tiny_vae(root, TAESD, 900)
    save_tiny_vae(root, TAESDXL, 1000)
    return root
