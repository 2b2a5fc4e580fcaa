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
# Order matters: the first compiled sd21 run compiles cold (inductor, then CUDA-graph capture);
# the last starts from the compile cache it filled, so their warm-up times are the cold and the
# warm start.
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
# The device budget is 15 minutes a session, start included: one call of at most 9 minutes,
# most important first, each run time-boxed so a slow compile cannot take the rest with it.
# SD-Turbo (SD 2.1) 512 px, 1 step: eager against stock diffusers (the baseline, quick) ...
bench sd21-1step-eager 60 --arch sd21 --resolution 512 --steps 1 --batch 1,4 --compile eager
# ... compiled with CUDA graphs, cold (inductor, then capture per batch size) ...
bench sd21-1step-cold 150 --arch sd21 --resolution 512 --steps 1 --batch 1,4 --no-stock
# SDXL 1024 px, 1 step, compiled, against stock diffusers.
bench sdxl-1step 190 --arch sdxl --resolution 1024 --steps 1 --batch 1 --compile cuda-graphs
# ... and SD-Turbo 2 steps from the compile cache the cold run filled: the warm start.
bench sd21-2step-warm 70 --arch sd21 --resolution 512 --steps 2 --batch 1,4 --no-stock
python3 bench/gpu_summary.py "$OUT"/*.json | tee "$OUT/summary.md"
