"""Tiny real diffusers/transformers models, saved as a diffusers folder, for loading tests.

Unlike the embedded model, these use the full AutoencoderKL and a scheduler that is not a
few-step one, the way most Stable Diffusion folders on the hub are laid out.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from promptcast.engine.model_index import EMBEDDED_MODEL


def save_tiny_sd_folder(path: Path) -> Path:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), norm_num_groups=32, cross_attention_dim=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=4,
    )
    # Four blocks: the 8x downscale of every Stable Diffusion VAE.
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32,) * 4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=32, layers_per_block=1,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    ))
    # The real CLIP tokenizer files, borrowed from the embedded model.
    tokenizer = CLIPTokenizer.from_pretrained(EMBEDDED_MODEL, subfolder="tokenizer")
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=PNDMScheduler(skip_prk_steps=True, steps_offset=1), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    if path.exists():
        shutil.rmtree(path)
    pipe.save_pretrained(path)
    return path
