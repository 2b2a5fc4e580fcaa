"""Train the embedded default model from a seed: autoencoder, text encoder, teacher, LCM student,
then a sharper decoder.

    python -m promptcast.training.train --work runs/shapes            # about 2 hours on 2 cores
    python -m promptcast.training.train --work runs/shapes --install  # then replace the embedded model

Each stage checkpoints into --work every two minutes and when it ends; run the same command
again to resume where it stopped (finished stages are loaded, not retrained). Progress lines
show the step, the loss, the speed and the time left. At the end the student is exported as one
diffusers folder (`WORK/model`: StableDiffusionPipeline layout, LCMScheduler, fp16 weights),
evaluated at 1, 2 and 4 steps through the serving engine, and the teacher at 25 steps, into
`WORK/eval.md`. `--smoke` runs a few steps of every stage, for CI.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from promptcast.engine.model_index import EMBEDDED_MODEL
from promptcast.training import models
from promptcast.training.autoencoder import encode_all, psnr, refine_decoder, train_autoencoder
from promptcast.training.data import all_scenes, pictures
from promptcast.training.distill import distill
from promptcast.training.evaluate import evaluate, evaluate_engine, table
from promptcast.training.teacher import sample, train_teacher
from promptcast.training.text_encoder import train_text_encoder

MODEL_NAME = "promptcast-shapes"
TEACHER_GUIDANCE = 3.0  # the scale the teacher is compared at, and the student's default


@dataclass(frozen=True)
class Plan:
    """Steps, batch sizes and learning rates of each stage."""

    ae_steps: int = 600
    ae_batch: int = 16
    ae_lr: float = 2e-3
    text_steps: int = 500
    text_batch: int = 128
    text_lr: float = 2e-3
    teacher_steps: int = 6000
    teacher_batch: int = 48
    teacher_lr: float = 1e-3
    distill_steps: int = 700
    distill_batch: int = 32
    distill_lr: float = 2e-4
    distill_loss: str = "huber"  # or "l2" (distill.py)
    decoder_steps: int = 1500
    decoder_batch: int = 32
    decoder_lr: float = 1e-3
    scene_stride: int = 1  # every Nth scene of the domain (the smoke run takes few)
    eval_samples: int = 200


SMOKE = Plan(ae_steps=3, ae_batch=4, text_steps=3, text_batch=8, teacher_steps=3, teacher_batch=4,
             distill_steps=3, distill_batch=4, decoder_steps=3, decoder_batch=4, scene_stride=97,
             eval_samples=4)


def log(line: str) -> None:
    print(time.strftime("%H:%M:%S"), line, flush=True)


def export(out: Path, ae: torch.nn.Module, text_encoder: torch.nn.Module,
           student: torch.nn.Module, plan: Plan) -> None:
    """The student as a diffusers folder that `promptcast serve --model` (and the stock
    StableDiffusionPipeline) load; weights in fp16, which halves the package."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copytree(EMBEDDED_MODEL / "tokenizer", out / "tokenizer")
    for name, module in (("vae", ae), ("text_encoder", text_encoder), ("unet", student)):
        module.to(torch.float16).save_pretrained(out / name)  # type: ignore[operator]
        module.to(torch.float32)
    models.student_scheduler().save_pretrained(out / "scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.30.0",
        "_promptcast_name": f"{MODEL_NAME} (shapes on plain backgrounds, LCM-distilled)",
        "_promptcast_training": asdict(plan),
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "LCMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderTiny"],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def train(work: Path, seed: int, plan: Plan) -> dict[str, object]:
    from transformers import CLIPTokenizer

    work.mkdir(parents=True, exist_ok=True)
    tokenizer = CLIPTokenizer.from_pretrained(EMBEDDED_MODEL / "tokenizer")
    scenes = all_scenes()[:: plan.scene_stride]
    images = pictures(scenes, models.IMAGE_SIZE)
    log(f"{len(scenes)} scenes rendered at {models.IMAGE_SIZE} px")

    def stage_seed(k: int) -> random.Random:
        # Each stage starts from its own seed, so resuming one never shifts another.
        torch.manual_seed(seed * 1000 + k)
        return random.Random(seed * 1000 + k)

    ae = train_autoencoder(work, images, plan.ae_steps, plan.ae_batch, plan.ae_lr, stage_seed(1), log)
    log(f"[autoencoder] reconstruction {psnr(ae, images[:512]):.1f} dB PSNR, "
        f"scaling factor {ae.config.scaling_factor:.3f}")
    latents = encode_all(ae, images)
    text_encoder = train_text_encoder(work, scenes, tokenizer, plan.text_steps, plan.text_batch,
                                      plan.text_lr, stage_seed(2), log)
    teacher = train_teacher(work, latents, scenes, text_encoder, tokenizer, plan.teacher_steps,
                            plan.teacher_batch, plan.teacher_lr, stage_seed(3), log)
    student = distill(work, teacher, latents, scenes, text_encoder, tokenizer, plan.distill_steps,
                      plan.distill_batch, plan.distill_lr, stage_seed(4), log,
                      loss_kind=plan.distill_loss)
    # Last, though it needs only the autoencoder: adding it left the stages before untouched.
    ae = refine_decoder(work, ae, images, plan.decoder_steps, plan.decoder_batch,
                        plan.decoder_lr, stage_seed(5), log)
    log(f"[decoder] reconstruction {psnr(ae, images[:512]):.1f} dB PSNR")
    export(work / "model", ae, text_encoder, student, plan)
    log(f"exported {work / 'model'}: {folder_mb(work / 'model'):.1f} MB")
    return {"teacher": teacher, "text_encoder": text_encoder, "tokenizer": tokenizer, "ae": ae}


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def evaluate_both(work: Path, parts: dict[str, object], samples: int) -> str:
    """The student at 1, 2, 4 steps through the serving engine; the teacher at 25 steps."""
    from promptcast.config import EngineConfig
    from promptcast.engine.pipeline import Engine

    engine = Engine(EngineConfig(model=str(work / "model"), device="cpu",
                                 guidance=TEACHER_GUIDANCE))
    engine.load()
    student_rows = evaluate_engine(engine, samples, [1, 2, 4])

    def teacher_render(text: str, seed: int, k: int) -> object:
        return sample(parts["teacher"], parts["text_encoder"], parts["tokenizer"],  # type: ignore[arg-type]
                      parts["ae"], [text], [seed], steps=k, guidance=TEACHER_GUIDANCE)[0]  # type: ignore[arg-type]

    with torch.no_grad():
        teacher_rows = evaluate(teacher_render, samples, [25], models.IMAGE_SIZE)  # type: ignore[arg-type]
    lines = table(student_rows, "student").splitlines()
    lines += table(teacher_rows, "teacher").splitlines()[2:]
    report = "\n".join(lines)
    (work / "eval.md").write_text(report + "\n")
    (work / "eval.json").write_text(json.dumps({"student": student_rows, "teacher": teacher_rows}))
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="checkpoints and outputs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads (2 beat 1 for training batches on a 2-core machine)")
    parser.add_argument("--smoke", action="store_true", help="a few steps of every stage (CI)")
    parser.add_argument("--teacher-steps", type=int, help="override the plan's teacher steps")
    parser.add_argument("--distill-steps", type=int, help="override the plan's distillation steps")
    parser.add_argument("--distill-loss", choices=["l2", "huber"],
                        help="override the plan's distillation loss")
    parser.add_argument("--no-eval", action="store_true")
    parser.add_argument("--install", action="store_true",
                        help=f"replace the embedded model ({EMBEDDED_MODEL}) with the result")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    plan = SMOKE if args.smoke else Plan()
    if args.teacher_steps:
        plan = replace(plan, teacher_steps=args.teacher_steps)
    if args.distill_steps:
        plan = replace(plan, distill_steps=args.distill_steps)
    if args.distill_loss:
        plan = replace(plan, distill_loss=args.distill_loss)
    started = time.monotonic()
    parts = train(args.work, args.seed, plan)
    log(f"trained in {(time.monotonic() - started) / 60:.1f} min")
    if not args.no_eval:
        print(evaluate_both(args.work, parts, plan.eval_samples), flush=True)
    if args.install:
        shutil.rmtree(EMBEDDED_MODEL)
        shutil.copytree(args.work / "model", EMBEDDED_MODEL)
        log(f"installed into {EMBEDDED_MODEL}")


if __name__ == "__main__":
    main(sys.argv[1:])
