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
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from promptcast.config import EngineConfig
from promptcast.core.limits import Limits
from promptcast.core.scheduler import RenderRequest
from promptcast.engine.compile import (
    SCOPES,
    FastCall,
    compile_blocks,
    decoder_call,
    default_compile_cache,
    encoder_call,
    inductor_options,
    optimise_layout,
    resolve_mode,
    use_compile_cache,
)
from promptcast.engine.image import DecodedImages, frame_encoder
from promptcast.engine.loading import Components, load_components
from promptcast.engine.model_index import ModelLoadError
from promptcast.engine.presets import PRESETS, Preset, infer_preset, make_scheduler
from promptcast.engine.prompt_cache import LRUCache
from promptcast.engine.prompts import Conditioning, PromptEncoder
from promptcast.engine.sampling import (
    IDENTITY,
    StepPlan,
    draws_noise,
    plan_steps,
    step_call,
    step_noise,
    supports,
)
from promptcast.engine.stage_clock import StageClock
from promptcast.engine.transfer import select_rows, to_device, to_host
from promptcast.engine.yuv import converts_on_device, i420_from_rgb

log = logging.getLogger(__name__)


class RenderCancelled(Exception):
    """render() stopped early because its `cancelled` callback said so."""


@dataclass
class Rendered:
    pixels: np.ndarray  # (H, W, 3) uint8 RGB
    timings: dict[str, float]  # milliseconds per stage (of the whole batch it was rendered in)
    prompt_cache_hit: bool
    batch_size: int = 1  # frames rendered together with this one, itself included
    prompt_truncated: bool = False  # only the first `max_prompt_tokens` tokens were used
    jpeg: bytes | None = None  # encoded by the engine (--jpeg-encode), if it was asked to
    yuv: np.ndarray | None = None  # (H * 3 / 2, W) uint8 I420 for a video track (--video-convert)


@dataclass(frozen=True)
class WarmUp:
    """How far start-up's warm-up has got. A first start on a GPU compiles and captures every
    shape bucket, minutes each for SDXL, before /readyz says ready: the log and /readyz say how
    many are done and, at the rate so far, about how long is left."""

    buckets: int  # shape buckets to warm: sizes x batch sizes (eager: one per size)
    done: int = 0
    elapsed_s: float = 0.0

    def left_s(self) -> float | None:
        """At the mean time per bucket so far; None before the first is done. (The first size's
        buckets also compile the text encoder(s) for each batch size: the estimate starts high.)"""
        return None if not self.done else self.elapsed_s / self.done * (self.buckets - self.done)

    def report(self) -> dict[str, object]:
        left = self.left_s()
        return {"buckets": self.buckets, "done": self.done, "elapsed_s": round(self.elapsed_s, 1),
                "estimated_left_s": None if left is None else round(left)}


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


def guidance_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """LCM's sinusoidal embedding of guidance weights (w = scale - 1), (B,) -> (B, dim): what
    LCM UNets take as `timestep_cond`. The training of the default model embeds with it too."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    args = (w.float() * 1000.0)[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return torch.nn.functional.pad(emb, (0, dim % 2))


class Engine:
    """Call every method from the one engine thread (runtime/worker.py does)."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.loaded = False
        self.prompt_cache: LRUCache[Conditioning] = LRUCache(config.prompt_cache_size)
        self._noise: LRUCache[torch.Tensor] = LRUCache(32)
        # Encoded init images: a client streaming a canvas re-sends the same image with
        # each prompt edit, so one encode serves them all.
        self._init_latents: LRUCache[torch.Tensor] = LRUCache(8)
        self._images = DecodedImages()
        self._plans: dict[int, StepPlan] = {}  # txt2img schedules by step count
        # img2img by (steps, strength): the plan and how the init latents are noised to its
        # first step, latents = a * init + b * noise (None: the scheduler has no plan). An LRU:
        # a client's strength slider may send any number of strengths.
        self._img2img_plans: LRUCache[tuple[StepPlan, float, float] | None] = LRUCache(64)
        self._time_id_rows: dict[tuple[int, int, int], torch.Tensor] = {}
        # Replaced (not changed) as each bucket is warmed: other threads read it (/readyz).
        self.warming: WarmUp | None = None

    # ------------------------------------------------------------ start-up

    def load(self, components: Components | None = None) -> None:
        """Load the model and fix its limits. Idempotent. `components` (with a named preset)
        replaces loading: the benchmark passes random-weight real architectures this way."""
        if self.loaded:
            return
        cfg = self.config
        self.device = resolve_device(cfg.device)
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        if self.device.type == "cpu" and cfg.cpu_threads > 0:
            torch.set_num_threads(cfg.cpu_threads)
        if self.device.type == "cuda" and self.device.index is not None:
            # The current device is per thread, and the streams, graph captures and events made
            # without naming one use it: on cuda:1 with device 0 current, a capture would record
            # an empty graph (the kernels run on cuda:1's stream), and every replay would return
            # the warm-up frame. This runs on the engine thread, which does all the CUDA work.
            torch.cuda.set_device(self.device)
        started = time.perf_counter()
        preset = self._named_preset()
        steps = cfg.steps or (preset.default_steps if preset else 0)
        if preset is not None and steps not in preset.steps:
            raise ModelLoadError(
                f"preset {preset.name} supports {list(preset.steps)} steps, not {steps}"
            )
        if components is not None:
            assert preset is not None, "components need a named preset"
            self.c: Components = components
        elif preset is None:  # a --model without --preset: load it, then read its recipe
            probe = Preset("auto", "", cfg.model, "turbo", (1,), 1, 0.0)
            self.c = load_components(cfg, probe, 1, self.device, self.dtype)
            preset = infer_preset(self.c.scheduler, self.c.unet.config, self.c.source)
            steps = cfg.steps or preset.default_steps
        else:
            self.c = load_components(cfg, preset, steps, self.device, self.dtype)
        self.preset = preset
        self.guidance = preset.guidance if cfg.guidance is None else cfg.guidance
        self.scheduler = make_scheduler(preset, self.c.scheduler, steps)
        self.vae_scale = self._vae_scale_factor(self.c.full_vae)
        self.limits = self._limits(preset, steps)
        self.timesteps = {k: [int(t) for t in self._set_timesteps(k)] for k in self.limits.steps}
        cond_dim = self.c.unet.config.time_cond_proj_dim
        # LCM checkpoints take the guidance scale as an embedding (w = scale - 1) instead of a
        # second, unconditional UNet pass; other models run classifier-free guidance above 1.
        self._timestep_cond = (
            guidance_embedding(torch.tensor([self.guidance - 1.0]), cond_dim).to(self.device, self.dtype)
            if cond_dim
            else None
        )
        self.cfg_scale = self.guidance if (cond_dim is None and self.guidance > 1.0) else None
        # The sampler's arithmetic as per-step coefficients (engine/sampling.py), worked out now
        # for every step count offered; without support, diffusers' own step runs.
        self._planned = supports(self.scheduler)
        self._noisy = draws_noise(self.scheduler)
        for k in self.limits.steps:
            self._txt2img_plan(k)
        self._prepare_calls()
        self._jpeg = frame_encoder(cfg.jpeg_encode, self.device, cfg.jpeg_quality)
        self._yuv = converts_on_device(cfg.video_convert, self.device)
        self.load_seconds = time.perf_counter() - started
        self.loaded = True
        log.info(
            "loaded %s (preset %s, %s) on %s/%s in %.1f s",
            self.c.name, preset.name, type(self.scheduler).__name__,
            self.device, str(self.dtype).removeprefix("torch."), self.load_seconds,
        )

    def _prepare_calls(self) -> None:
        """The text encoder(s), the UNet and the tiny decoder as the hot path calls them: eager,
        compiled, or compiled and captured per shape bucket (engine/compile.py)."""
        cfg = self.config
        self.mode = resolve_mode(cfg.compile, self.device)
        options = inductor_options(cfg.compile_tuning)
        if cfg.compile_scope not in SCOPES:
            raise ModelLoadError(f"unknown compile scope {cfg.compile_scope!r}; one of {', '.join(SCOPES)}")
        whole = cfg.compile_scope == "whole"
        if self.mode != "eager":
            use_compile_cache(Path(cfg.compile_cache) if cfg.compile_cache else default_compile_cache())
            optimise_layout([self.c.unet, self.c.vae], self.device, cfg.compile_tuning)
            # Every bucket compiles once at warm-up (the text encoder, UNet and decoder calls
            # share one code object each, across engines): make room for this engine's buckets
            # in dynamo's per-code cache.
            buckets = len(self.limits.sizes) * len(cfg.batch_sizes)
            torch._dynamo.config.recompile_limit += buckets
            if not whole:
                # Compiled blocks all share one code object (nn.Module._call_impl): room for
                # every block at every bucket, at most.
                blocks = compile_blocks(self.c.unet, options)
                torch._dynamo.config.recompile_limit += blocks * buckets
                torch._dynamo.config.accumulated_recompile_limit += blocks * buckets
        # Compiled whole, or (blocks scope) captured as they are: see compile.REPEATED_BLOCKS.
        self.prompts = PromptEncoder(self.c, self.device, self.mode, options, cfg.batch_sizes,
                                     self.prompt_cache, compiled=whole)
        # The UNet with the sampler step around it: one call (one captured graph) per step.
        self._step = FastCall("unet step", step_call(self.c.unet, self.cfg_scale), self.mode,
                              options, whole)
        with torch.inference_mode():  # like every tensor the render path makes
            self._identity = torch.tensor(IDENTITY, dtype=torch.float32, device=self.device)
        self._decoder = FastCall("decoder", decoder_call(self.c.vae), self.mode, options)
        # img2img's image encoder: captured (one graph per size) but not compiled, since not
        # every server sees img2img and capturing costs milliseconds at warm-up.
        self._image_encoder = FastCall("image encoder", encoder_call(self.c.vae, self.dtype),
                                       self.mode, options, whole=False)
        # The full autoencoder decodes refined frames only: off the hot path, left eager.
        self._full_decoder = (
            self._decoder if self.c.full_vae is self.c.vae
            else FastCall("full decoder", decoder_call(self.c.full_vae), "eager")
        )

    @property
    def max_batch(self) -> int:
        return max(self.config.batch_sizes)

    def _named_preset(self) -> Preset | None:
        name = self.config.preset or (None if self.config.model else "tiny")
        if name is None:
            return None
        if name not in PRESETS:
            raise ModelLoadError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
        return PRESETS[name]

    def warm_up(self, batch_sizes: Sequence[int] | None = None) -> None:
        """Render every shape bucket (size x batch size) once, so that compiling and capturing
        happen now and the first real frame pays no first-call costs. Eager mode has no
        buckets: one frame per size does. `batch_sizes`: only these of the configured ones
        (the benchmark warms and measures one at a time, so that a run cut short keeps what it
        measured)."""
        started = time.perf_counter()
        if self.mode == "eager":
            batch_sizes = (1,)
        elif batch_sizes is None:
            batch_sizes = self.config.batch_sizes
        elif not set(batch_sizes) <= set(self.config.batch_sizes):
            raise ValueError(f"batch sizes {list(batch_sizes)} are not all among "
                             f"{list(self.config.batch_sizes)}")
        self.warming = progress = WarmUp(len(self.limits.sizes) * len(batch_sizes))
        for width, height in self.limits.sizes:
            for b in batch_sizes:
                # Prompts new to each batch size: the text encoder's buckets are warmed too.
                reqs = [RenderRequest(f"warm-up {b}.{i}", i, self.limits.default_steps, width,
                                      height) for i in range(b)]
                self.render_batch(reqs)
                if self.mode != "eager" and b == batch_sizes[-1]:
                    # img2img's image encoder has a bucket per size too
                    with torch.inference_mode():  # as render_batch calls it
                        self._encode_image(np.zeros((height, width, 3), np.uint8))
                self.warming = progress = replace(
                    progress, done=progress.done + 1, elapsed_s=time.perf_counter() - started)
                left = progress.left_s()
                log.info("warm-up: %dx%d, batch %d done (%d of %d buckets) after %.1f s%s",
                         width, height, b, progress.done, progress.buckets, progress.elapsed_s,
                         f"; about {left:.0f} s left" if left else "")
        self.warm_up_seconds = time.perf_counter() - started
        log.info("warmed up (%s) in %.1f s", self.mode, self.warm_up_seconds)
        self.prompt_cache.clear()
        self.prompt_cache.hits = self.prompt_cache.misses = 0

    @staticmethod
    def _vae_scale_factor(vae: Any) -> int:
        cfg = vae.config
        if "decoder_block_out_channels" in cfg:  # AutoencoderTiny
            return int(cfg.upsampling_scaling_factor ** (len(cfg.decoder_block_out_channels) - 1))
        return int(2 ** (len(cfg.block_out_channels) - 1))

    def _limits(self, preset: Preset, default_steps: int) -> Limits:
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
        # A checkpoint distilled for K steps (SDXL-Lightning) is only sampled with K.
        steps = (default_steps,) if preset.checkpoint_per_step_count else preset.steps
        if cfg.max_steps:
            steps = tuple(k for k in steps if k <= cfg.max_steps) or (min(steps),)
        if default_steps not in steps:
            raise ModelLoadError(f"default steps {default_steps} is not among {list(steps)}")
        return Limits(
            sizes=tuple(sorted(set(sizes))),
            default_size=default_size,
            steps=steps,
            default_steps=default_steps,
        )

    def model_info(self) -> dict[str, object]:
        """What the hello message tells clients about the model in use."""
        return {
            "name": self.c.name,
            "source": self.c.source,
            "preset": self.preset.name,
            "family": self.preset.family,
            "arch": self.c.arch,
            "scheduler": type(self.scheduler).__name__,
            "prediction_type": self.scheduler.config.prediction_type,
            "guidance": self.guidance,
            "lora": self.c.lora,
            "decoder": type(self.c.vae).__name__,
            "timesteps": {str(k): v for k, v in self.timesteps.items()},
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "max_prompt_tokens": self.prompts.max_tokens,
            "compile": self.mode,
            "compile_tuning": self.config.compile_tuning,
            "compile_scope": self.config.compile_scope,
            "compile_fallbacks": self.compile_fallbacks(),
            "batch_sizes": list(self.config.batch_sizes),
        }

    def compile_fallbacks(self) -> dict[str, str]:
        """The calls that run in a lesser mode than `compile` asked, because the compiler or the
        graph capture could not handle them (FastCall): name -> why. Empty normally."""
        calls: list[FastCall[Any]] = [self.prompts.call, self._step, self._decoder,
                                      self._image_encoder]
        return {call.name: call.fallback for call in calls if call.fallback is not None}

    # ------------------------------------------------------------ hot path

    def _set_timesteps(self, steps: int) -> torch.Tensor:
        self.scheduler.set_timesteps(steps, device=self.device)
        timesteps: torch.Tensor = self.scheduler.timesteps
        return timesteps

    def _txt2img_plan(self, steps: int) -> StepPlan | None:
        """The plan for `steps` from pure noise, made once per step count (None: diffusers'
        step runs)."""
        if not self._planned:
            return None
        if steps not in self._plans:
            self._set_timesteps(steps)
            plan = plan_steps(self.scheduler, self.device)
            if plan is None:
                return None
            self._plans[steps] = plan
        return self._plans[steps]

    def _unconditional(self, like: Conditioning) -> Conditioning:
        """The empty prompt for classifier-free guidance (zeros where SDXL asks for them)."""
        if self.c.arch == "sdxl" and self.c.force_zeros_for_empty_prompt:
            pooled = torch.zeros_like(like.pooled) if like.pooled is not None else None
            return Conditioning(torch.zeros_like(like.embeds), pooled)
        return self.prompts.lookup([""])[0][0]

    def _initial_noise(self, seed: int, height: int, width: int) -> torch.Tensor:
        """(1, C, H/8, W/8). Drawn on the CPU so a seed gives the same picture on any device."""
        shape = (1, self.c.unet.config.in_channels, height // self.vae_scale, width // self.vae_scale)

        def draw() -> torch.Tensor:
            gen = torch.Generator("cpu").manual_seed(seed)
            return to_device(torch.randn(shape, generator=gen).to(self.dtype), self.device)

        noise, _ = self._noise.get_or_compute((seed, shape), draw)
        return noise

    def _img2img_start(self, req: RenderRequest, gen: torch.Generator
                       ) -> tuple[StepPlan | torch.Tensor, torch.Tensor]:
        """The schedule (a plan, or diffusers' timesteps) and starting latents for img2img: the
        init image, encoded, noised to the first timestep that `strength` leaves. Matches the
        stock pipelines step for step: LCM shortens its schedule and still takes `steps` steps
        (LatentConsistencyModelImg2Img); the others skip the first (1 - strength) of `steps`
        (StableDiffusion(XL)Img2Img)."""
        assert req.image is not None
        init, _ = self._init_latents.get_or_compute(
            (req.image, req.width, req.height),
            lambda: self._encode_image(self._images.get(req.image or b"", req.width, req.height)),
        )
        # Drawn from the step generator first, in the order the stock pipelines draw.
        noise = torch.randn(init.shape, generator=gen, dtype=self.dtype)
        planned = self._img2img_plans.get_or_compute(
            (req.steps, req.strength), lambda: self._img2img_plan(req.steps, req.strength),
        )[0] if self._planned else None
        if planned is None:  # diffusers' step runs: its scheduler is set up for every frame
            timesteps, _ = self._img2img_timesteps(req.steps, req.strength)
            latents = self.scheduler.add_noise(init, noise.to(self.device), timesteps[:1])
            return timesteps, latents
        plan, a, b = planned
        return plan, init * a + to_device(noise, self.device) * b

    def _img2img_plan(self, steps: int, strength: float) -> tuple[StepPlan, float, float] | None:
        """img2img's plan, and (a, b) of its start a * init + b * noise; None without a plan.
        The scheduler's noising is linear in the image and the noise: its coefficients come from
        its own add_noise on units, once per schedule (it would copy its tables to the device,
        and wait for them, on every frame)."""
        timesteps, start = self._img2img_timesteps(steps, strength)
        plan = plan_steps(self.scheduler, self.device, start) if self._planned else None
        if plan is None:
            return None
        unit, zero = torch.ones(1), torch.zeros(1)
        a = float(self.scheduler.add_noise(unit, zero, timesteps[:1]))
        b = float(self.scheduler.add_noise(zero, unit, timesteps[:1]))
        return plan, a, b

    def _img2img_timesteps(self, steps: int, strength: float) -> tuple[torch.Tensor, int]:
        """Set the scheduler up for img2img; its timesteps and where they begin in its table.
        As the stock pipelines do: LCM shortens its schedule and still takes `steps` steps;
        the others skip the first (1 - strength) of `steps`."""
        if self.preset.family == "lcm":
            # LCM samples from the first `original_inference_steps * strength` of its
            # distillation timesteps, which must hold `steps` of them: diffusers raises on a
            # smaller strength (below 0.04 at 2 steps of 50, 0.08 at 4). Such a strength takes
            # the smallest that holds them, the least change LCM can make, as the others take
            # at least one step.
            original = int(self.scheduler.config.original_inference_steps)
            if int(original * strength) < steps:
                strength = min(1.0, (steps + 0.5) / original)
            self.scheduler.set_timesteps(steps, device=self.device, strength=strength)
            return self.scheduler.timesteps, 0
        all_timesteps = self._set_timesteps(steps)
        run = max(1, min(int(steps * strength), steps))  # at least one step
        start = (steps - run) * self.scheduler.order
        self.scheduler.set_begin_index(start)
        return all_timesteps[start:], start

    def _encode_image(self, pixels: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (1, C, H/8, W/8) latents in the UNet's scale."""
        # The bytes go over as they are (a quarter of them as floats), without waiting for the
        # device, and become floats there.
        x = to_device(torch.from_numpy(pixels), self.device)  # (H, W, 3) uint8
        # A copy: a captured call's output is overwritten by its next replay, and this is cached.
        return self._image_encoder(x.permute(2, 0, 1)[None]).clone()  # (1, C, h, w)

    def _time_ids(self, height: int, width: int, rows: int) -> torch.Tensor:
        """SDXL's micro-conditioning, (original size, crop, target size) per row: (rows, 6).
        Kept on the device per bucket: a copy from the CPU each frame would wait for the GPU."""
        key = (height, width, rows)
        if key not in self._time_id_rows:
            ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=self.dtype)
            self._time_id_rows[key] = ids.repeat(rows, 1).to(self.device)
        return self._time_id_rows[key]

    def refine_steps(self, requested: int | None) -> int:
        """Steps for refined frames: `requested`, or about twice the default, among the step
        counts the model supports (a one-step-count checkpoint keeps its own)."""
        supported = (self.limits.default_steps,) if self.preset.checkpoint_per_step_count else (
            self.preset.steps)
        if requested is not None:
            if requested not in supported:
                raise ModelLoadError(f"refine steps {requested} is not among {list(supported)}")
            return requested
        want = 2 * self.limits.default_steps
        return min((k for k in supported if k >= want), default=max(supported))

    @property
    def encodes_jpeg(self) -> bool:
        """Whether render_batch can hand back JPEGs (--jpeg-encode put them in the engine)."""
        return self._jpeg is not None

    def prefetch(self, req: RenderRequest) -> Future[np.ndarray] | None:
        """Start decoding `req`'s init image (img2img) on a worker thread, so that the engine
        thread finds it decoded when it renders `req`; returns the decode (None: `req` has no
        image). Call from any thread, before `req` can reach the engine."""
        if req.image is None:
            return None
        return self._images.start(req.image, req.width, req.height)

    @property
    def converts_video(self) -> bool:
        """Whether render_batch can hand back I420 planes for video (--video-convert)."""
        return self._yuv

    def render(self, req: RenderRequest, cancelled: Callable[[], bool] | None = None,
               jpeg: bool = False, video: bool = False) -> Rendered:
        """Render one request; see render_batch."""
        return self.render_batch([req], cancelled, [jpeg], [video])[0]

    @torch.inference_mode()
    def render_batch(
        self, reqs: Sequence[RenderRequest], cancelled: Callable[[], bool] | None = None,
        jpeg: Sequence[bool] = (), video: Sequence[bool] = (),
    ) -> list[Rendered]:
        """Render requests that share one `RenderRequest.batch_key()` as one batch (img2img:
        one request alone), at most `max_batch` of them. Each frame is the one its request
        would get alone: its own prompt, its seed's noise, its own generator.

        If `cancelled` is given, it is polled between UNet steps and a True answer raises
        RenderCancelled: a long render (a refine) gives way within one step.

        `jpeg[i]`: request i's frame is wanted as a JPEG too. Where the engine encodes
        (`encodes_jpeg`), it does so for those frames only, before their pixels leave the device
        (frames that go to a video track need none).

        `video[i]`: request i's frame goes to a video track. Where the engine converts
        (`converts_video`), it hands back those frames' I420 planes too (`Rendered.yuv`), made
        on the device, so the track need not convert on the CPU."""
        first = reqs[0]
        assert len(reqs) <= self.max_batch and all(r.batch_key() == first.batch_key() for r in reqs)
        assert first.image is None or len(reqs) == 1, "img2img renders alone"
        # Compiled and captured calls exist per batch size: pad with copies of the last request.
        rows = [*reqs, *[reqs[-1]] * (self._padded_batch(len(reqs)) - len(reqs))]
        height, width = first.height, first.width
        clock = StageClock(self.device)
        clock.mark()
        looked_up = self.prompts.lookup([r.text for r in reqs])
        conds = [c for c, _ in looked_up] + [looked_up[-1][0]] * (len(rows) - len(reqs))
        embeds = torch.cat([c.embeds for c in conds])  # (B, 77, D)
        pooled_rows = [c.pooled for c in conds if c.pooled is not None]  # SDXL only
        pooled = torch.cat(pooled_rows) if pooled_rows else None  # (B, P)
        if self.cfg_scale is not None:  # batch [unconditional x B, conditional x B]
            uncond = self._unconditional(conds[0])
            embeds = torch.cat([uncond.embeds.expand_as(embeds), embeds])  # (2B, 77, D)
            if pooled is not None and uncond.pooled is not None:
                pooled = torch.cat([uncond.pooled.expand_as(pooled), pooled])  # (2B, P)
        time_ids = None if pooled is None else self._time_ids(height, width, len(pooled))
        clock.mark()

        # Schedulers that re-noise between steps (LCM, ancestral Euler) draw from these
        # generators, one per row, so that part of the picture is stable per seed too.
        gens = [torch.Generator("cpu").manual_seed(r.seed) for r in rows]
        schedule: StepPlan | torch.Tensor
        if first.image is None:
            plan = self._txt2img_plan(first.steps)
            schedule = self._set_timesteps(first.steps) if plan is None else plan
            noise = [self._initial_noise(r.seed, height, width) for r in rows]
            init_sigma = self.scheduler.init_noise_sigma if plan is None else plan.init_sigma
            latents = torch.cat(noise) * init_sigma  # (B, C, h, w)
        else:
            schedule, latents = self._img2img_start(first, gens[0])
        conditioning = (embeds, self._timestep_cond, pooled, time_ids)
        latents = self._denoise(latents, schedule, gens, conditioning, cancelled)
        clock.mark()

        if cancelled is not None and cancelled():
            raise RenderCancelled
        frames = self._decode(latents, first.full_vae)[: len(reqs)]  # (n, 3, H, W) uint8
        clock.mark()
        wanted = [i for i in range(len(reqs)) if i < len(jpeg) and jpeg[i]]
        jpegs: list[bytes | None] = [None] * len(reqs)
        if self._jpeg is not None and wanted:
            for i, data in zip(wanted, self._jpeg(select_rows(frames, wanted)), strict=True):
                jpegs[i] = data
        on_video = [i for i in range(len(reqs)) if i < len(video) and video[i]] if self._yuv else []
        # (v, H * 3 / 2, W)
        planes = i420_from_rgb(select_rows(frames, on_video)) if on_video else None
        clock.mark()
        nhwc = frames.permute(0, 2, 3, 1).contiguous()  # (n, H, W, 3)
        pixels, *rest = to_host(nhwc) if planes is None else to_host(nhwc, planes)
        yuvs: list[np.ndarray | None] = [None] * len(reqs)
        for i, yuv in zip(on_video, rest[0] if rest else [], strict=True):
            yuvs[i] = yuv
        text_ms, denoise_ms, decode_ms, encode_ms = clock.stages_ms()
        timings = {"text_encode_ms": text_ms, "denoise_ms": denoise_ms, "decode_ms": decode_ms}
        if any(j is not None for j in jpegs) or planes is not None:
            timings["encode_ms"] = encode_ms
        return [
            Rendered(p, dict(timings), hit, len(reqs), cond.truncated, j, y)
            for p, (cond, hit), j, y in zip(pixels, looked_up, jpegs, yuvs, strict=True)
        ]

    def _denoise(
        self, latents: torch.Tensor, schedule: StepPlan | torch.Tensor,
        gens: list[torch.Generator], conditioning: tuple[torch.Tensor | None, ...],
        cancelled: Callable[[], bool] | None,
    ) -> torch.Tensor:
        """Run the schedule's steps: from its plan, with nothing between the step calls but
        the draw of the next step's noise; or, for a scheduler without one, diffusers' step
        around the same call (returning the prediction)."""
        if isinstance(schedule, StepPlan):
            for i, noisy in enumerate(schedule.noisy):
                if cancelled is not None and cancelled():
                    raise RenderCancelled
                noise = None
                if self._noisy:  # a tensor at every step: one bucket per shape
                    noise = step_noise(gens, latents) if noisy else torch.zeros_like(latents)
                latents = self._step(latents, schedule.timesteps[i], schedule.coefs[i], noise,
                                     *conditioning)
            return latents
        for t in schedule:
            if cancelled is not None and cancelled():
                raise RenderCancelled
            model_in = self.scheduler.scale_model_input(latents, t)
            pred = self._step(model_in, t, self._identity, None, *conditioning)
            latents = self.scheduler.step(pred, t, latents, generator=gens).prev_sample
        return latents

    def recover(self, exc: BaseException) -> None:
        """After a render raised: give back what it may have left behind, so the next frame
        has the device's memory. An out-of-memory error mid-step leaves the allocator holding
        freed blocks; the caching allocator returns them here. Captured graphs keep their own
        pool and stay valid. Any other failure (a request's own, such as a bad image) left
        nothing to give back: emptying the caches then would only make every other session's
        next frames allocate, and re-encode their init images, as often as one client sends
        bad input. Call from the engine thread."""
        if not isinstance(exc, torch.OutOfMemoryError):
            return
        self._init_latents.clear()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
        log.warning("out of device memory; caches freed: %s", str(exc).splitlines()[0])

    def _padded_batch(self, n: int) -> int:
        if self.mode == "eager":
            return n  # no shape buckets to fill
        return min(b for b in self.config.batch_sizes if b >= n)

    def _decode(self, latents: torch.Tensor, full: bool) -> torch.Tensor:
        """(B, C, h, w) latents -> (B, 3, H, W) uint8 frames, still on the device."""
        if not full or self._full_decoder is self._decoder:
            return self._decoder(latents)
        # The full decoder of refined frames (--refine-full-vae) runs eager, at any batch size,
        # never warmed up: with cuDNN's benchmark mode on (--compile-tuning), its first call at
        # each shape would time every convolution algorithm of every layer on the hot path,
        # with all sessions waiting. cuDNN's heuristic choice instead.
        benchmark = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = False
        try:
            return self._full_decoder(latents)
        finally:
            torch.backends.cudnn.benchmark = benchmark
