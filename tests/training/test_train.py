"""The training pipeline: every stage runs, resumes exactly, and exports a folder the serving
engine loads as an LCM model. Few steps each (the real run takes about 95 minutes)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from promptcast.config import EngineConfig
from promptcast.core.scheduler import RenderRequest
from promptcast.engine.pipeline import Engine, guidance_embedding
from promptcast.training import models, train
from promptcast.training.autoencoder import refine_decoder
from promptcast.training.data import LABELS, all_scenes, labels, tokens
from promptcast.training.distill import boundary_scalings
from promptcast.training.loop import EMA, run_stage, warmup_cosine
from promptcast.training.text_encoder import summary_positions


def smoke(work: Path, *extra: str) -> None:
    train.main(["--work", str(work), "--smoke", "--no-eval", "--threads", "1", *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("train")
    smoke(work)
    return work


def test_the_export_is_an_lcm_model_the_engine_serves(trained: Path) -> None:
    engine = Engine(EngineConfig(model=str(trained / "model"), device="cpu"))
    engine.load()
    assert engine.preset.family == "lcm" and type(engine.scheduler).__name__ == "LCMScheduler"
    assert engine.scheduler.config.prediction_type == "v_prediction"
    assert engine.limits.default_size == (models.IMAGE_SIZE, models.IMAGE_SIZE)
    for steps in (1, 2, 4):
        frame = engine.render(RenderRequest("a big red circle on the left", 5, steps, 64, 64))
        assert frame.pixels.shape == (64, 64, 3)
    size = sum(p.stat().st_size for p in (trained / "model").rglob("*") if p.is_file())
    assert size <= 20e6, size  # what ships in the package


def test_every_stage_left_a_finished_checkpoint(trained: Path, capsys: pytest.CaptureFixture[str]
                                                ) -> None:
    for stage, steps in (("autoencoder", train.SMOKE.ae_steps), ("text_encoder", train.SMOKE.text_steps),
                         ("teacher", train.SMOKE.teacher_steps), ("distill", train.SMOKE.distill_steps),
                         ("decoder", train.SMOKE.decoder_steps)):
        assert torch.load(trained / f"{stage}.pt", weights_only=False)["step"] == steps
    smoke(trained)  # a second run trains nothing: every stage is loaded
    out = capsys.readouterr().out
    assert out.count("resumed at step 3/3") == 5 and "loss" not in out


def test_refining_the_decoder_leaves_the_latent_space_alone(tmp_path: Path) -> None:
    # The teacher and student were trained on the encoder's latents: only the decoder may move.
    ae = models.autoencoder()
    ae.requires_grad_(False).eval()
    before = {k: v.clone() for k, v in ae.state_dict().items()}
    images = torch.rand(8, 3, models.IMAGE_SIZE, models.IMAGE_SIZE) * 2 - 1
    refined = refine_decoder(tmp_path, ae, images, steps=2, batch=4, lr=1e-3,
                             rng=random.Random(0), log=lambda _: None)
    assert all(torch.equal(v, before[k]) for k, v in ae.state_dict().items())  # a copy was trained
    after = refined.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items() if k.startswith("encoder."))
    assert any(not torch.equal(after[k], v) for k, v in before.items() if k.startswith("decoder."))
    assert not any(p.requires_grad for p in refined.parameters()) and not refined.training


def test_an_interrupted_stage_resumes_to_the_same_weights(tmp_path: Path) -> None:
    """A stage killed mid-way and run again ends where an uninterrupted one does: weights,
    optimiser, learning-rate schedule, EMA and random generators all come back."""

    class Interrupted(Exception):
        pass

    def stage(work: Path, stop_at: int | None) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        rng = random.Random(0)
        model = torch.nn.Linear(4, 4)
        ema = EMA(model, 0.9)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        schedule = warmup_cosine(optimizer, 6, warmup=2)

        def step(i: int) -> float:
            if i == stop_at:
                raise Interrupted
            x = torch.randn(8, 4) * rng.random()  # both generators feed the batch
            loss = model(x).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            ema.update(model)
            return loss.item()

        state = {"model": model, "ema": ema, "opt": optimizer, "lr": schedule}
        run_stage("toy", work, 6, state, step, rng, save_every_s=0.0, log=lambda _: None)
        return {**model.state_dict(), **{f"ema.{k}": v for k, v in ema.module.state_dict().items()}}

    for name in ("straight", "stopped"):
        (tmp_path / name).mkdir()
    straight = stage(tmp_path / "straight", None)
    with pytest.raises(Interrupted):
        stage(tmp_path / "stopped", 3)
    assert torch.load(tmp_path / "stopped/toy.pt", weights_only=False)["step"] == 3
    resumed = stage(tmp_path / "stopped", None)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_boundary_scalings_and_guidance_embedding_are_the_samplers() -> None:
    scheduler = models.student_scheduler()
    t = torch.tensor([0, 19, 499, 999])
    c_skip, c_out = boundary_scalings(t)
    for i, step in enumerate(t.tolist()):
        want_skip, want_out = scheduler.get_scalings_for_boundary_condition_discrete(step)
        assert c_skip[i].item() == pytest.approx(want_skip) and c_out[i].item() == pytest.approx(want_out)
    # The embedding distillation trains with, and the engine serves with, is diffusers' own.
    from diffusers import LatentConsistencyModelPipeline

    w = torch.tensor([2.0, 7.0])
    for dim in (models.GUIDANCE_DIM, 33):
        reference = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, dim)
        assert torch.allclose(guidance_embedding(w, dim), reference, atol=1e-5)


def test_text_encoder_targets_follow_what_the_caption_names() -> None:
    got = labels(["a small red star at the top on a black background", "blue box", ""])
    named = {a: [LABELS[a][i] for i in got[a].tolist()] for a in LABELS}
    assert named == {"shape": ["star", "square", "-"], "colour": ["red", "blue", "-"],
                     "size": ["small", "-", "-"], "position": ["top", "-", "-"],
                     "background": ["black", "-", "-"]}
    from transformers import CLIPTokenizer

    from promptcast.engine.model_index import EMBEDDED_MODEL

    ids = tokens(CLIPTokenizer.from_pretrained(EMBEDDED_MODEL / "tokenizer"), ["a red star"])
    assert ids[0, :3].tolist() == [49406, 320, 736]  # the real CLIP ids: BOS, "a", "red"
    mask = summary_positions(ids)[0]
    # BOS, "a", "red", "star", then EOS and its padding: everything from the EOS on
    assert not mask[:4].any() and mask[4:].all()


def test_the_domain_is_every_scene_once() -> None:
    scenes = all_scenes()
    assert len(scenes) == len(set(scenes)) == 4 * 10 * 2 * 5 * 9
    assert all(s.colour != s.background for s in random.Random(0).sample(scenes, 100))


def test_the_pseudo_huber_distillation_loss_is_l1_far_and_quadratic_near() -> None:
    from promptcast.training.distill import HUBER_C, consistency_loss

    zero = torch.zeros(4, dtype=torch.float64)  # float32 rounds away the near case
    far = torch.full((4,), 0.5, dtype=torch.float64)
    near = torch.full((4,), HUBER_C / 100, dtype=torch.float64)
    assert consistency_loss(far, zero, "huber").item() == pytest.approx(0.5 - HUBER_C, rel=1e-4)
    assert consistency_loss(near, zero, "huber").item() == pytest.approx(
        (HUBER_C / 100) ** 2 / (2 * HUBER_C), rel=1e-3)
    assert consistency_loss(far, zero, "l2").item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="unknown distillation loss"):
        consistency_loss(far, zero, "l1")
