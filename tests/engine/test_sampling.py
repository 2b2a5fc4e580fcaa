"""The samplers as per-step coefficients (engine/sampling.py) against diffusers' own steps:
same model input, same next latents, same fresh noise, for every scheduler and prediction type
the presets use, full schedules and img2img's shortened ones. The engine-level check, frames
equal to the stock pipelines' for every preset, is in test_presets.py."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
)
from PIL import Image

from promptcast.config import EngineConfig
from promptcast.core.scheduler import RenderRequest
from promptcast.engine import pipeline
from promptcast.engine.pipeline import Engine
from promptcast.engine.sampling import plan_steps, step_call, step_noise, supports

SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
CPU = torch.device("cpu")


def scheduler(cls: type, prediction: str) -> Any:
    if cls is LCMScheduler:
        return LCMScheduler(original_inference_steps=50, set_alpha_to_one=True, steps_offset=1,
                            prediction_type=prediction, **SD_BETAS)
    return cls(timestep_spacing="trailing", prediction_type=prediction, **SD_BETAS)


class FakeUNet:
    """Returns a fixed prediction per call and records the model input it was given."""

    def __init__(self, preds: list[torch.Tensor]) -> None:
        self.preds = preds
        self.inputs: list[torch.Tensor] = []

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor, **_: Any) -> tuple[torch.Tensor]:
        self.inputs.append(sample.clone())
        return (self.preds[len(self.inputs) - 1],)


def generators() -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(seed) for seed in (7, 8)]


def run_diffusers(sched: Any, x: torch.Tensor, preds: list[torch.Tensor], timesteps: torch.Tensor
                  ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    gens = generators()
    inputs, outputs = [], []
    for t, pred in zip(timesteps, preds, strict=True):
        inputs.append(sched.scale_model_input(x, t))
        x = sched.step(pred, t, x, generator=gens).prev_sample
        outputs.append(x)
    return inputs, outputs


def run_plan(sched: Any, x: torch.Tensor, preds: list[torch.Tensor], begin: int
             ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    plan = plan_steps(sched, CPU, begin)
    assert plan is not None
    unet = FakeUNet(preds)
    call = step_call(unet, None)
    gens = generators()
    outputs = []
    for i, noisy in enumerate(plan.noisy):
        noise = step_noise(gens, x) if noisy else torch.zeros_like(x)
        x = call(x, plan.timesteps[i], plan.coefs[i], noise, torch.zeros(2, 77, 8), None, None, None)
        outputs.append(x)
    return unet.inputs, outputs


CASES = [
    (EulerDiscreteScheduler, "epsilon"),
    (EulerDiscreteScheduler, "v_prediction"),
    (EulerDiscreteScheduler, "sample"),  # SDXL-Lightning's 1-step checkpoint
    (EulerAncestralDiscreteScheduler, "epsilon"),
    (EulerAncestralDiscreteScheduler, "v_prediction"),
    (LCMScheduler, "epsilon"),
    (LCMScheduler, "v_prediction"),
    (LCMScheduler, "sample"),
]


@pytest.mark.parametrize(("cls", "prediction"), CASES)
@pytest.mark.parametrize("steps", [1, 2, 4])
def test_plan_steps_like_diffusers(cls: type, prediction: str, steps: int) -> None:
    torch.manual_seed(steps)
    x = torch.randn(2, 4, 8, 8)
    preds = [torch.randn(2, 4, 8, 8) for _ in range(steps)]
    ours, theirs = scheduler(cls, prediction), scheduler(cls, prediction)
    ours.set_timesteps(steps)
    theirs.set_timesteps(steps)
    plan = plan_steps(ours, CPU)
    assert plan is not None and len(plan) == steps
    assert plan.init_sigma == pytest.approx(float(theirs.init_noise_sigma))
    ref_inputs, ref_outputs = run_diffusers(theirs, x * plan.init_sigma, preds, theirs.timesteps)
    inputs, outputs = run_plan(ours, x * plan.init_sigma, preds, 0)
    for step, (a, b) in enumerate(zip(inputs, ref_inputs, strict=True)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=f"model input, step {step}")
    for step, (a, b) in enumerate(zip(outputs, ref_outputs, strict=True)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=f"latents after step {step}")
    # Noise where the scheduler draws it and it counts: LCM re-noises all but the last step,
    # ancestral Euler every step but the last (whose noise it scales by zero).
    stochastic = cls is not EulerDiscreteScheduler
    assert plan.noisy == tuple(stochastic and i < steps - 1 for i in range(steps))


@pytest.mark.parametrize(("cls", "prediction"), [(EulerDiscreteScheduler, "epsilon"),
                                                 (EulerAncestralDiscreteScheduler, "epsilon")])
def test_plan_can_start_part_way_like_img2img(cls: type, prediction: str) -> None:
    # StableDiffusion(XL)Img2Img skips the first steps of a turbo schedule: begin index 2 of 4.
    x = torch.randn(2, 4, 8, 8)
    preds = [torch.randn(2, 4, 8, 8) for _ in range(2)]
    ours, theirs = scheduler(cls, prediction), scheduler(cls, prediction)
    for s in (ours, theirs):
        s.set_timesteps(4)
        s.set_begin_index(2)
    _, ref = run_diffusers(theirs, x, preds, theirs.timesteps[2:])
    _, got = run_plan(ours, x, preds, 2)
    torch.testing.assert_close(got[-1], ref[-1], atol=1e-5, rtol=1e-5)


def test_lcm_plan_follows_its_strength_shortened_schedule() -> None:
    x = torch.randn(2, 4, 8, 8)
    preds = [torch.randn(2, 4, 8, 8) for _ in range(4)]
    ours, theirs = scheduler(LCMScheduler, "epsilon"), scheduler(LCMScheduler, "epsilon")
    for s in (ours, theirs):
        s.set_timesteps(4, strength=0.5)
    _, ref = run_diffusers(theirs, x, preds, theirs.timesteps)
    _, got = run_plan(ours, x, preds, 0)
    torch.testing.assert_close(got[-1], ref[-1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sched", [
    LCMScheduler(clip_sample=True, **SD_BETAS),  # a clamp: not affine
    LCMScheduler(thresholding=True, **SD_BETAS),
    EulerAncestralDiscreteScheduler(prediction_type="sample", **SD_BETAS),  # diffusers refuses it
    DDIMScheduler(**SD_BETAS),  # not a few-step sampler the presets use
])
def test_unsupported_schedulers_get_no_plan(sched: Any) -> None:
    sched.set_timesteps(2)
    assert not supports(sched) and plan_steps(sched, CPU) is None


def test_guidance_combines_the_two_halves_as_diffusers_does() -> None:
    uncond, text = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    unet = FakeUNet([torch.cat([uncond, text])])
    x = torch.randn(1, 4, 8, 8)
    # Identity coefficients: the call returns the guided prediction.
    out = step_call(unet, 1.5)(x, torch.tensor(999), torch.tensor([1.0, 0.0, 1.0, 0.0]), None,
                               torch.zeros(2, 77, 8), None, None, None)
    torch.testing.assert_close(out, uncond + 1.5 * (text - uncond))
    assert unet.inputs[0].shape == (2, 4, 8, 8)  # the latents twice: unconditional rows first


def _png(size: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), (0, 90, 200)).save(out, format="PNG")
    return out.getvalue()


def test_without_a_plan_the_engine_runs_diffusers_step_to_the_same_frames(
    engine: Engine, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As for a user's model whose scheduler has no plan: the same call, diffusers' step around it.
    monkeypatch.setattr(pipeline, "supports", lambda _: False)
    unplanned = Engine(EngineConfig())
    unplanned.load()
    assert unplanned._txt2img_plan(2) is None and engine._txt2img_plan(2) is not None
    for req in (RenderRequest("a red circle", 5, 2, 64, 64),
                RenderRequest("a red circle", 5, 3, 64, 64, image=_png(64), strength=0.6)):
        a = engine.render(req).pixels.astype(int)
        b = unplanned.render(req).pixels.astype(int)
        assert np.abs(a - b).max() <= 1
        # A second frame of the same schedule sets diffusers' scheduler up again (its step
        # keeps state), to the same frame.
        assert np.array_equal(unplanned.render(req).pixels, b)
