"""The render path: prompt -> (cached) embedding -> few-step denoise -> tiny decode -> pixels.

The components come from a diffusers folder (engine/loading.py) but the loop is driven here
rather than through a diffusers pipeline's __call__: that is what lets the server keep one
initial noise per seed, cache prompt embeddings, time each stage, and (later) capture the
UNet and decoder in CUDA graphs per shape bucket.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from promptcast.config import EngineConfig
from promptcast.core.limits import Limits
from promptcast.core.scheduler import RenderRequest
from promptcast.engine.loading import Components, load_components
from promptcast.engine.model_index import ModelLoadError
from promptcast.engine.presets import Preset, few_step_scheduler
from promptcast.engine.prompt_cache import LRUCache

log = logging.getLogger(__name__)


@dataclass
class Rendered:
    pixels: np.ndarray  # (H, W, 3) uint8 RGB
    timings: dict[str, float]  # milliseconds per stage
    prompt_cache_hit: bool


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda was asked for, but torch sees no CUDA device")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def guidance_embedding(w: float, dim: int) -> torch.Tensor:
    """LCM's sinusoidal embedding of the guidance scale (w = scale - 1). Shape (1, dim)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    args = torch.tensor([w * 1000.0])[:, None] * freqs[None, :]  # (1, half)
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return torch.nn.functional.pad(emb, (0, dim % 2))


class Engine:
    """Call every method from the one engine thread (runtime/worker.py does)."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.loaded = False
        self.prompt_cache: LRUCache[torch.Tensor] = LRUCache(config.prompt_cache_size)
        self._noise: LRUCache[torch.Tensor] = LRUCache(32)

    # ------------------------------------------------------------ start-up

    def load(self) -> None:
        """Load the model and fix its limits. Idempotent."""
        if self.loaded:
            return
        self.device = resolve_device(self.config.device)
        self.dtype = resolve_dtype(self.config.dtype, self.device)
        if self.device.type == "cpu" and self.config.cpu_threads > 0:
            torch.set_num_threads(self.config.cpu_threads)
        started = time.perf_counter()
        self.c: Components = load_components(self.config.model, self.device, self.dtype)
        self.scheduler, self.preset = few_step_scheduler(self.c.scheduler, self.c.unet.config)
        self.vae_scale = self._vae_scale_factor(self.c.vae)
        self.limits = self._limits(self.preset)
        self.timesteps = {
            k: [int(t) for t in self._set_timesteps(k)] for k in self.limits.steps
        }
        cond_dim = self.c.unet.config.time_cond_proj_dim
        self._timestep_cond = (
            guidance_embedding(self.preset.guidance - 1.0, cond_dim).to(self.device, self.dtype)
            if cond_dim
            else None
        )
        self.load_seconds = time.perf_counter() - started
        self.loaded = True
        log.info(
            "loaded %s (%s, %s) on %s/%s in %.1f s",
            self.c.name, self.preset.family, type(self.scheduler).__name__,
            self.device, str(self.dtype).removeprefix("torch."), self.load_seconds,
        )

    def warm_up(self) -> None:
        """Render once per allowed size so the first real frame pays no first-call costs."""
        for width, height in self.limits.sizes:
            self.render(RenderRequest("warm-up", 0, self.limits.default_steps, width, height))
        self.prompt_cache.clear()
        self.prompt_cache.hits = self.prompt_cache.misses = 0

    @staticmethod
    def _vae_scale_factor(vae: Any) -> int:
        cfg = vae.config
        if "decoder_block_out_channels" in cfg:  # AutoencoderTiny
            return int(cfg.upsampling_scaling_factor ** (len(cfg.decoder_block_out_channels) - 1))
        return int(2 ** (len(cfg.block_out_channels) - 1))

    def _limits(self, preset: Preset) -> Limits:
        cfg = self.config
        unet_cfg = self.c.unet.config
        sample = unet_cfg.sample_size
        native = int(sample if isinstance(sample, int) else sample[0]) * self.vae_scale
        # Each UNet down block halves the latent; sizes must survive that exactly.
        multiple = self.vae_scale * 2 ** (len(unet_cfg.down_block_types) - 1)
        sizes = cfg.sizes or tuple((s, s) for s in (native // 2, native, native * 2))
        default_size = cfg.size or (native, native)
        if default_size not in sizes:
            sizes = (*sizes, default_size)
        for w, h in sizes:
            if w % multiple or h % multiple or w <= 0 or h <= 0:
                raise ModelLoadError(
                    f"size {w}x{h} does not suit {self.c.name}: width and height must be "
                    f"positive multiples of {multiple}"
                )
        max_steps = cfg.max_steps or preset.max_steps
        default_steps = cfg.steps or preset.default_steps
        if not 1 <= default_steps <= max_steps:
            raise ModelLoadError(f"default steps {default_steps} is not in 1..{max_steps}")
        return Limits(
            sizes=tuple(sorted(set(sizes))),
            default_size=default_size,
            steps=tuple(range(1, max_steps + 1)),
            default_steps=default_steps,
        )

    def model_info(self) -> dict[str, object]:
        """What the hello message tells clients about the model in use."""
        return {
            "name": self.c.name,
            "source": self.c.source,
            "family": self.preset.family,
            "scheduler": type(self.scheduler).__name__,
            "prediction_type": self.scheduler.config.prediction_type,
            "guidance": self.preset.guidance,
            "decoder": type(self.c.vae).__name__,
            "timesteps": {str(k): v for k, v in self.timesteps.items()},
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    # ------------------------------------------------------------ hot path

    def _set_timesteps(self, steps: int) -> torch.Tensor:
        self.scheduler.set_timesteps(steps, device=self.device)
        timesteps: torch.Tensor = self.scheduler.timesteps
        return timesteps

    def _encode_prompt(self, text: str) -> torch.Tensor:
        """(1, 77, D) last hidden state of the CLIP text encoder."""
        tok = self.c.tokenizer(
            text, padding="max_length", max_length=self.c.tokenizer.model_max_length,
            truncation=True, return_tensors="pt",
        )
        hidden: torch.Tensor = self.c.text_encoder(tok.input_ids.to(self.device))[0]
        return hidden

    def _initial_noise(self, seed: int, height: int, width: int) -> torch.Tensor:
        """(1, C, H/8, W/8). Drawn on the CPU so a seed gives the same picture on any device."""
        shape = (1, self.c.unet.config.in_channels, height // self.vae_scale, width // self.vae_scale)

        def draw() -> torch.Tensor:
            gen = torch.Generator("cpu").manual_seed(seed)
            return torch.randn(shape, generator=gen).to(self.device, self.dtype)

        noise, _ = self._noise.get_or_compute((seed, shape), draw)
        return noise

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def render(self, req: RenderRequest) -> Rendered:
        t0 = time.perf_counter()
        # The key names the encoder too, so a cache can never serve another model's embedding.
        emb, hit = self.prompt_cache.get_or_compute(
            (self.c.source, "text_encoder", req.text), lambda: self._encode_prompt(req.text)
        )
        self._sync()
        t1 = time.perf_counter()

        timesteps = self._set_timesteps(req.steps)
        latents = self._initial_noise(req.seed, req.height, req.width) * self.scheduler.init_noise_sigma
        # LCM re-noises between steps; a fixed generator keeps that part stable per seed too.
        gen = torch.Generator("cpu").manual_seed(req.seed)
        for t in timesteps:
            model_in = self.scheduler.scale_model_input(latents, t)
            pred = self.c.unet(
                model_in, t, encoder_hidden_states=emb, timestep_cond=self._timestep_cond
            ).sample  # (1, C, h, w)
            latents = self.scheduler.step(pred, t, latents, generator=gen).prev_sample
        self._sync()
        t2 = time.perf_counter()

        image = self.c.vae.decode(latents / self.c.vae.config.scaling_factor).sample  # (1,3,H,W) in [-1, 1]
        pixels = ((image[0].float().permute(1, 2, 0) + 1.0) * 127.5).clamp(0, 255).round()
        out = pixels.to(torch.uint8).cpu().numpy()  # (H, W, 3)
        t3 = time.perf_counter()
        return Rendered(
            out,
            {
                "text_encode_ms": (t1 - t0) * 1e3,
                "denoise_ms": (t2 - t1) * 1e3,
                "decode_ms": (t3 - t2) * 1e3,
            },
            hit,
        )
