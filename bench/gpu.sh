#!/usr/bin/env bash
# The GPU measurements of docs/performance.md, in one call on a lent GPU machine.
#
# The device image has torch, transformers (5.17), pillow and numpy but not diffusers. Here, once:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1
# (.whl/ is git-ignored), then run it through the device tool from the repository root:
#   run(command="bash bench/gpu.sh", carry=[".whl"], timeout_s=560)
# It prints one table per run and a summary last; the JSON reports land in $OUT.
#
# Each run compiles cold (a fresh machine has no compile cache), so each is time-boxed and the
# most important come first: the default tuning with a kernel profile, the same with tuning off
# (the side-by-side ratio), SDXL, then max-autotune if time is left.
set -uo pipefail
OUT=${OUT:-/tmp/promptcast-gpu}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/server${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
CACHE=/tmp/promptcast-compile
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"

bench() {  # name, seconds allowed, then promptcast bench arguments
  local name=$1 limit=$2; shift 2
  echo "== $name (at most ${limit} s): $*"
  timeout "$limit" python3 -m promptcast bench --random-weights --device cuda --dtype float16 \
    --compile-cache "$CACHE" --iterations 30 --json "$OUT/$name.json" "$@" 2>&1 \
    | grep -v -e '^Loading' -e 'it/s]' | tee -a "$OUT/log.txt"
  echo "== $name: exit ${PIPESTATUS[0]} after $SECONDS s in all"
}
# The device budget is 15 minutes a session, start included: one call of at most 9 minutes.
# SD-Turbo (SD 2.1) 512 px, 1 step, CUDA graphs, default tuning (cuDNN benchmark, 1x1
# convolutions as matmuls), nvJPEG in the engine, against stock diffusers; where the time goes.
bench sd21-fast 200 --arch sd21 --resolution 512 --steps 1 --batch 1,4 --compile cuda-graphs \
  --compile-tuning fast --profile "$OUT/profile-sd21.md"
# ... the same with inductor's defaults (what the first GPU run measured): the ratio.
bench sd21-off 120 --arch sd21 --resolution 512 --steps 1 --batch 1 --compile cuda-graphs \
  --compile-tuning off --no-stock
# SDXL 1024 px, 1 step, batch 1 and 4, against stock diffusers; where the time goes.
bench sdxl-fast 190 --arch sdxl --resolution 1024 --steps 1 --batch 1,4 --compile cuda-graphs \
  --compile-tuning fast --profile "$OUT/profile-sdxl.md"
# max-autotune, if the box has time left (its cold compile is the longest).
left=$((540 - SECONDS))
if [ "$left" -gt 60 ]; then
  bench sd21-max "$left" --arch sd21 --resolution 512 --steps 1 --batch 1 --compile cuda-graphs \
    --compile-tuning max --no-stock
fi
cat "$OUT"/profile-*.md 2>/dev/null | head -80
python3 bench/gpu_summary.py "$OUT"/*.json | tee "$OUT/summary.md"
