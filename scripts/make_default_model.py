"""Build the embedded default model: a tiny Stable-Diffusion-format folder with random weights.

The folder is what `promptcast serve` loads when no --model is given, through the same
`from_pretrained` code that loads a user's model. It is built once and committed; run this
again only to change its architecture (a later issue replaces the random weights with trained ones).

The tokenizer is the real CLIP tokenizer (49,408 tokens). Its BPE merges ship inside the
open-clip-torch wheel, which is not a dependency of promptcast; fetch it once with

    pip download --no-deps -d /tmp/oc open-clip-torch
    python scripts/make_default_model.py --open-clip-wheel /tmp/oc/open_clip_torch-*.whl

Deterministic: the same seed gives the same weights, byte for byte.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import zipfile
from pathlib import Path

import torch
from diffusers import AutoencoderTiny, LCMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "server/promptcast/models/tiny"
BPE_IN_WHEEL = "open_clip/bpe_simple_vocab_16e6.txt.gz"


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable-character table (the GPT-2 scheme)."""
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def write_clip_tokenizer_files(bpe_gz: bytes, out: Path) -> None:
    """vocab.json and merges.txt exactly as OpenAI CLIP builds its vocabulary from the BPE file."""
    lines = gzip.decompress(bpe_gz).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408, len(vocab)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(
        json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False), "utf-8"
    )
    (out / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", "utf-8"
    )


def build(out: Path, bpe_gz: bytes, seed: int) -> None:
    if out.exists():
        shutil.rmtree(out)
    torch.manual_seed(seed)

    tok_dir = out / "tokenizer"
    write_clip_tokenizer_files(bpe_gz, tok_dir)
    tokenizer = CLIPTokenizer(
        str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77,
        pad_token="<|endoftext|>",
    )
    tokenizer.save_pretrained(tok_dir)

    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406,
            eos_token_id=49407, pad_token_id=49407,
        )
    )
    # 16x16 latents x the tiny decoder's 8x upsampling = 128 px native resolution.
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), norm_num_groups=32, cross_attention_dim=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=4,
        # LCM-distilled UNets take the guidance scale as an embedding instead of running CFG.
        time_cond_proj_dim=32,
    )
    vae = AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
    )
    scheduler = LCMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        original_inference_steps=50, timestep_spacing="leading", steps_offset=1,
        prediction_type="epsilon",
        set_alpha_to_one=True,
    )

    text_encoder.save_pretrained(out / "text_encoder")
    unet.save_pretrained(out / "unet")
    vae.save_pretrained(out / "vae")
    scheduler.save_pretrained(out / "scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.30.0",
        "_promptcast_name": "promptcast-tiny (random weights)",
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--open-clip-wheel", type=Path, help="open_clip_torch-*.whl holding the BPE file")
    src.add_argument("--bpe", type=Path, help="bpe_simple_vocab_16e6.txt.gz itself")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.bpe:
        bpe_gz = args.bpe.read_bytes()
    else:
        with zipfile.ZipFile(args.open_clip_wheel) as wheel:
            bpe_gz = wheel.read(BPE_IN_WHEEL)
    build(args.out, bpe_gz, args.seed)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {args.out} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
