"""The architectures of the default model, all standard diffusers/transformers classes, and the
noise schedule they share.

Sizes are set by what trains in under 2 hours (about 90 minutes alone, measured) on a 2-core CPU and
ships in under 20 MB:
- 64 px pictures and a 1/4-scale autoencoder: 16x16x4 latents (at 1/8 scale a small shape
  blurs into a few latent pixels);
- a 64-wide CLIP text encoder: its 49,408-token embedding is most of the model's bytes;
- a three-level UNet (16, 8 and 4 latent pixels) with cross-attention at the lower two, plus
  the pooled text added to the time embedding (`addition_embed_type="text"`), which carries
  colour and background to every ResNet block from the first iterations on.

The schedule is v-prediction with zero terminal SNR (and so trailing timesteps): epsilon
prediction with Stable Diffusion's schedule leaves signal at the last timestep, and a 1-step
sampler then paints a washed-out background (measured on the first try; see shared design).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import (
    AutoencoderTiny,
    DDIMScheduler,
    DDPMScheduler,
    LCMScheduler,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel

IMAGE_SIZE = 64
LATENT_SIZE = 16  # IMAGE_SIZE / the autoencoder's 4x
LATENT_CHANNELS = 4
TEXT_WIDTH = 64
GUIDANCE_DIM = 64  # the student's sinusoidal guidance-scale embedding
# LCM's skipping-step solver: the teacher takes one DDIM step of this many timesteps, and the
# student is trained on the 50 timesteps 19, 39, ..., 999 that LCMScheduler samples from.
ORIGINAL_STEPS = 50

SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "timestep_spacing": "trailing",
}


def autoencoder() -> Any:
    # Three levels, two halvings: 64 px -> 16x16 latents. 32 channels are plenty for flat
    # shapes; the decoder is the part that runs on every frame.
    return AutoencoderTiny(
        encoder_block_out_channels=(32, 32, 32), decoder_block_out_channels=(32, 32, 32),
        num_encoder_blocks=(1, 1, 1), num_decoder_blocks=(1, 1, 1),
        latent_channels=LATENT_CHANNELS,
    )


def text_encoder() -> CLIPTextModel:
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408, hidden_size=TEXT_WIDTH, intermediate_size=4 * TEXT_WIDTH,
            num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=77,
            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        )
    )


def unet(guidance_dim: int | None = None) -> Any:
    """The teacher (guidance_dim None), or the student's shape: the same network plus a
    projection of the guidance-scale embedding into the time embedding."""
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        layers_per_block=1, block_out_channels=(32, 64, 96), norm_num_groups=16,
        # Attention at 8x8 and 4x4 only: at 16x16 it tripled the time per step.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_WIDTH, attention_head_dim=8,
        addition_embed_type="text", addition_embed_type_num_heads=4,
        time_cond_proj_dim=guidance_dim,
    )


def student_from(teacher: Any) -> Any:
    """The teacher's weights in the student's shape. The guidance projection starts at zero,
    so the student begins as exactly the teacher (as in the LCM reference recipe)."""
    student = unet(GUIDANCE_DIM)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert not unexpected and all("cond_proj" in k for k in missing), (missing, unexpected)
    torch.nn.init.zeros_(student.time_embedding.cond_proj.weight)
    return student


def training_scheduler() -> Any:
    return DDPMScheduler(**SCHEDULE)


def teacher_sampler() -> Any:
    """How the teacher is sampled for comparison (25 steps with classifier-free guidance)."""
    return DDIMScheduler(**SCHEDULE, clip_sample=False, set_alpha_to_one=False)


def student_scheduler() -> Any:
    """What ships with the model: the `lcm` family's sampler, on the teacher's schedule."""
    return LCMScheduler(**SCHEDULE, original_inference_steps=ORIGINAL_STEPS, clip_sample=False,
                        set_alpha_to_one=False, steps_offset=1)
