"""The few-step samplers as numbers per step, so that a denoising step is one device call.

diffusers' `scheduler.step()` works a step out in Python at each call, between UNet calls: it
finds its place in the schedule with `.nonzero().item()`, indexes CPU tables with the device's
timestep (LCM), draws the step's fresh noise on the CPU and copies it over, each a host sync
that leaves the GPU idle while Python catches up, and none of it something a CUDA graph can
hold. For the samplers the presets use (LCM, Euler and ancestral Euler; epsilon, v or sample
prediction) a step is affine in the latents x, the model's prediction and the fresh noise:

    model input = in_scale * x
    x' = x_coef * x + pred_coef * prediction + noise_coef * noise

with coefficients that depend on the step alone. `plan_steps` works them out from the
scheduler's own tables (sigmas, alphas) once per schedule, and `step_call` is the UNet call
with that arithmetic around it: one function of tensors that compiles and captures like the
UNet did (engine/compile.py), with the coefficients as a tensor input, so one captured graph
per shape bucket serves every step of every schedule (any step count, img2img's shortened
ones). The fresh noise is still drawn on the CPU from each row's generator, in the order
diffusers draws it, so a seed gives the stock pipeline's picture (tests/engine/test_presets.py).

A scheduler outside these (or one set up with thresholding or sample clipping, which are not
affine) gets no plan, and the engine runs diffusers' own step around the same call with the
identity coefficients (`IDENTITY`: the call returns the prediction).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from promptcast.engine.compile import unet_call
from promptcast.engine.transfer import to_device

# (in_scale, x_coef, pred_coef, noise_coef) that make step_call return the UNet's prediction.
IDENTITY = (1.0, 0.0, 1.0, 0.0)

Coefs = tuple[float, float, float, float]


@dataclass(frozen=True)
class StepPlan:
    """A schedule of K steps as the step call takes it."""

    timesteps: torch.Tensor  # (K,) on the device, as the UNet takes them
    coefs: torch.Tensor  # (K, 4) float32 on the device: in_scale, x_coef, pred_coef, noise_coef
    noisy: tuple[bool, ...]  # per step: whether it draws fresh noise
    init_sigma: float  # the initial noise's scale (txt2img)

    def __len__(self) -> int:
        return len(self.noisy)


def _kind(scheduler: Any) -> str | None:
    """'lcm', 'euler' or 'ancestral' where the plan can stand in for scheduler.step()."""
    name = type(scheduler).__name__
    cfg = scheduler.config
    prediction = cfg.prediction_type
    if name == "LCMScheduler":
        if cfg.thresholding or cfg.clip_sample:  # a clamp of the predicted sample: not affine
            return None
        return "lcm" if prediction in ("epsilon", "v_prediction", "sample") else None
    if name == "EulerDiscreteScheduler":
        return "euler" if prediction in ("epsilon", "v_prediction", "sample", "original_sample") else None
    if name == "EulerAncestralDiscreteScheduler":
        return "ancestral" if prediction in ("epsilon", "v_prediction") else None
    return None


def supports(scheduler: Any) -> bool:
    return _kind(scheduler) is not None


def draws_noise(scheduler: Any) -> bool:
    """Whether the scheduler adds fresh noise between steps (then step_call takes a noise
    tensor at every step, zeros where a step adds none: one bucket per shape either way)."""
    return _kind(scheduler) in ("lcm", "ancestral")


def _sigma_x0(sigma: float, prediction: str) -> tuple[float, float]:
    """The predicted clean sample as p * x + q * prediction, in the sigma (Euler) parametrisation."""
    if prediction == "epsilon":
        return 1.0, -sigma
    if prediction == "v_prediction":
        return 1.0 / (sigma**2 + 1.0), -sigma / math.sqrt(sigma**2 + 1.0)
    return 0.0, 1.0  # sample / original_sample


def _alpha_x0(alpha: float, prediction: str) -> tuple[float, float]:
    """The same in the alpha (DDPM, LCM) parametrisation; alpha is alphas_cumprod[t]."""
    if prediction == "epsilon":
        return 1.0 / math.sqrt(alpha), -math.sqrt(1.0 - alpha) / math.sqrt(alpha)
    if prediction == "v_prediction":
        return math.sqrt(alpha), -math.sqrt(1.0 - alpha)
    return 0.0, 1.0


def _compose(x0: tuple[float, float], x_coef: float, x0_coef: float, noise_coef: float,
             in_scale: float) -> Coefs:
    """x' = x_coef * x + x0_coef * x0 + noise_coef * noise, with x0 = p * x + q * prediction."""
    p, q = x0
    return in_scale, x_coef + x0_coef * p, x0_coef * q, noise_coef


def _euler_steps(scheduler: Any, begin: int, count: int, ancestral: bool) -> list[Coefs]:
    prediction = scheduler.config.prediction_type
    sigmas = [float(s) for s in scheduler.sigmas]
    steps = []
    for i in range(begin, begin + count):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        noise = 0.0
        if ancestral:  # EulerAncestralDiscreteScheduler.step
            noise = math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2)
            sigma_next = math.sqrt(sigma_next**2 - noise**2)  # sigma_down
        # x' = x + (x - x0) / sigma * (sigma_next - sigma)
        d = (sigma_next - sigma) / sigma
        steps.append(_compose(_sigma_x0(sigma, prediction), 1.0 + d, -d, noise,
                              1.0 / math.sqrt(sigma**2 + 1.0)))
    return steps


def _lcm_steps(scheduler: Any, begin: int, count: int) -> list[Coefs]:
    prediction = scheduler.config.prediction_type
    alphas = scheduler.alphas_cumprod
    timesteps = [int(t) for t in scheduler.timesteps]
    last = scheduler.num_inference_steps - 1
    steps = []
    for i in range(begin, begin + count):
        t = timesteps[i]
        alpha = float(alphas[t])
        c_skip, c_out = (float(c) for c in scheduler.get_scalings_for_boundary_condition_discrete(t))
        # denoised = c_out * x0 + c_skip * x; every step but the last re-noises it to the next
        # timestep (LCMScheduler.step).
        scale, noise = 1.0, 0.0
        if i != last:
            t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else t
            alpha_prev = float(alphas[t_prev]) if t_prev >= 0 else float(scheduler.final_alpha_cumprod)
            scale, noise = math.sqrt(alpha_prev), math.sqrt(1.0 - alpha_prev)
        steps.append(_compose(_alpha_x0(alpha, prediction), scale * c_skip, scale * c_out, noise, 1.0))
    return steps


def plan_steps(scheduler: Any, device: torch.device, begin: int = 0) -> StepPlan | None:
    """The plan for the steps the scheduler's current schedule (after `set_timesteps`) runs
    from index `begin` (img2img starts part-way along a turbo schedule); None where the
    scheduler is not one `supports`."""
    kind = _kind(scheduler)
    if kind is None:
        return None
    timesteps = scheduler.timesteps[begin:]
    count = len(timesteps)
    if len(set(timesteps.tolist())) != count:
        # diffusers finds its place by the timestep's value: a repeated one makes it skip.
        return None
    coefs = (_lcm_steps(scheduler, begin, count) if kind == "lcm"
             else _euler_steps(scheduler, begin, count, kind == "ancestral"))
    # Inference tensors, made alike wherever the plan is made (at load, or in a render):
    # compiled calls guard on the difference.
    with torch.inference_mode():
        return StepPlan(
            timesteps=timesteps.clone().to(device),
            coefs=to_device(torch.tensor(coefs, dtype=torch.float32), device),
            noisy=tuple(c[3] != 0.0 for c in coefs),
            init_sigma=float(scheduler.init_noise_sigma),
        )


def step_noise(generators: Sequence[torch.Generator], like: torch.Tensor) -> torch.Tensor:
    """A step's fresh noise as diffusers draws it (randn_tensor with one generator per row):
    each row from its own CPU generator, in the latents' dtype, then to the device without a
    sync: the CPU draws the next step's noise while the GPU runs this step."""
    shape = (1, *like.shape[1:])
    rows = [torch.randn(shape, generator=g, dtype=like.dtype) for g in generators]
    return to_device(torch.cat(rows), like.device)


def step_call(unet: Any, cfg_scale: float | None) -> Callable[..., torch.Tensor]:
    """One denoising step as a function of tensors (what compile and capture want):
    (x (B, C, h, w), timestep (), coefs (4,) float32, noise (B, C, h, w) | None,
    embeds (B' , 77, D), timestep_cond (1, Dc) | None, text_embeds (B', P) | None,
    time_ids (B', 6) | None) -> x' (B, C, h, w); B' = 2B with classifier-free guidance
    (unconditional rows first)."""
    run_unet = unet_call(unet)

    def call(
        x: torch.Tensor, timestep: torch.Tensor, coefs: torch.Tensor, noise: torch.Tensor | None,
        embeds: torch.Tensor, timestep_cond: torch.Tensor | None,
        text_embeds: torch.Tensor | None, time_ids: torch.Tensor | None,
    ) -> torch.Tensor:
        model_in = x * coefs[0]
        if cfg_scale is not None:
            model_in = torch.cat([model_in, model_in])
        pred = run_unet(model_in, timestep, embeds, timestep_cond, text_embeds, time_ids)
        if cfg_scale is not None:
            pred_uncond, pred_text = pred.chunk(2)
            pred = pred_uncond + cfg_scale * (pred_text - pred_uncond)
        # In float32, as diffusers' Euler steps are (LCM's run in the model's dtype).
        out = coefs[1] * x.float() + coefs[2] * pred.float()
        if noise is not None:
            out = out + coefs[3] * noise.float()
        return out.to(x.dtype)

    return call
