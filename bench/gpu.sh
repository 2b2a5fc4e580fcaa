#!/usr/bin/env bash
# The GPU measurements of docs/performance.md, in one call on a lent GPU machine.
#
# The device image has torch, transformers (5.17), pillow and numpy but not diffusers. Here, once:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1
# (.whl/ is git-ignored), then run it through the device tool from the repository root:
#   run(command="bash bench/gpu.sh", carry=[".whl"], timeout_s=540)
# It prints one table per run and a summary last; the JSON reports land in $OUT.
#
# Order matters: the first sd21 run compiles cold (inductor + autotuning, then CUDA-graph
# capture); the second starts from the compile cache it filled, so the two warm-up times are
# the cold and the warm start.
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

bench() {  # name, then promptcast bench arguments
  local name=$1; shift
  echo "== $name: $*"
  timeout 240 python3 -m promptcast bench --random-weights --device cuda --dtype float16 \
    --compile-cache "$CACHE" --iterations 30 --json "$OUT/$name.json" "$@" 2>&1 \
    | grep -v -e '^Loading' -e 'it/s]' | tee -a "$OUT/log.txt"
}
# SD-Turbo (SD 2.1) 512 px: 1 step, batches 1-8, against stock diffusers; cold compile.
bench sd21-1step-cold --arch sd21 --resolution 512 --steps 1 --batch 1,2,4,8
# The same again from the compile cache: the warm start.
bench sd21-1step-warm --arch sd21 --resolution 512 --steps 1 --batch 1,2,4,8 --no-stock
bench sd21-2step --arch sd21 --resolution 512 --steps 2 --batch 1,4 --no-stock
# SDXL 1024 px: 1 and 2 steps, batch 1 and 4, against stock diffusers.
bench sdxl-1step --arch sdxl --resolution 1024 --steps 1 --batch 1,4
bench sdxl-2step --arch sdxl --resolution 1024 --steps 2 --batch 1 --no-stock
python3 bench/gpu_summary.py "$OUT"/*.json | tee "$OUT/summary.md"
