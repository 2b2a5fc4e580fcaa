"""Write the real CLIP tokenizer (49,408 tokens) into the embedded default model's folder.

The default model's weights come from `python -m promptcast.training.train` (see
docs/default-model.md), which copies the tokenizer from that folder; this script is where the
tokenizer itself comes from. Its BPE merges ship inside the open-clip-torch wheel, which is not a
dependency of promptcast; fetch it once with

    pip download --no-deps -d /tmp/oc open-clip-torch
    python scripts/make_clip_tokenizer.py --open-clip-wheel /tmp/oc/open_clip_torch-*.whl

The ids match OpenAI CLIP's: BOS 49406, EOS 49407, "a" 320, "red" 736.
"""

from __future__ import annotations

import argparse
import gzip
import json
import zipfile
from pathlib import Path

from transformers import CLIPTokenizer

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "server/promptcast/models/tiny/tokenizer"
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


def build(out: Path, bpe_gz: bytes) -> None:
    write_clip_tokenizer_files(bpe_gz, out)
    tokenizer = CLIPTokenizer(
        str(out / "vocab.json"), str(out / "merges.txt"), model_max_length=77,
        pad_token="<|endoftext|>",
    )
    tokenizer.save_pretrained(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--open-clip-wheel", type=Path, help="open_clip_torch-*.whl holding the BPE file")
    src.add_argument("--bpe", type=Path, help="bpe_simple_vocab_16e6.txt.gz itself")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if args.bpe:
        bpe_gz = args.bpe.read_bytes()
    else:
        with zipfile.ZipFile(args.open_clip_wheel) as wheel:
            bpe_gz = wheel.read(BPE_IN_WHEEL)
    build(args.out, bpe_gz)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {args.out} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
