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
# Each run compiles cold (a fresh machine has no compile cache), so each is time-boxed (and
# capped by what is left of 540 s) and, after smoke runs of seconds that stop the script if a
# CUDA-only path fails, the most important come first: SD-Turbo, then SDXL
# compiled whole (the default), each at 1 and 2 steps, batch 1 and 4, with a kernel profile;
# then SD-Turbo's warm start, SDXL compiled by blocks (the side-by-side of the two scopes),
# tuning off and max-autotune. Their limits add up to more than 540 s: the later runs get
# time only where the ones before finish early, which, with cold compiles, is seldom.
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

bench() {  # name, seconds allowed (capped by what is left of the call), then bench arguments
  local name=$1 limit=$2 cache=$CACHE; shift 2
  local left=$((540 - SECONDS))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 60 ]; then echo "== $name: skipped, ${left} s left"; return; fi
  [[ " $* " == *" --compile-scope blocks "* ]] && cache=$CACHE-blocks  # its own, truly cold
  echo "== $name (at most ${limit} s): $*"
  timeout "$limit" python3 -m promptcast bench --random-weights --device cuda --dtype float16 \
    --compile-cache "$cache" --iterations 30 --json "$OUT/$name.json" "$@" 2>&1 \
    | grep -v -e '^Loading' -e 'it/s]' | tee -a "$OUT/log.txt"
  local status=${PIPESTATUS[0]}
  echo "== $name: exit $status after $SECONDS s in all"
  return "$status"
}
# The device budget is 15 minutes a session, start included: one call of at most 9 minutes.
# A cold compile is most of each step (the last GPU run: about 128 s for SDXL's UNet at one
# bucket, before the text encoders were compiled too; SD-Turbo's two buckets did not finish in
# 150 s). The bench warms and measures one batch size at a time, batch 1 first with its
# keystroke latency and profile, and rewrites its JSON after each (a step cut off by its limit
# keeps those, marked "(cut off)" in the summary), so the limits are generous and the order is
# by importance.
# 0. Smoke runs first, seconds long: SD-Turbo's and SDXL-Turbo's architectures at 256 px,
#    eager, on the GPU, through every CUDA-only path the compiled runs take after their minutes
#    of compiling (pinned copies, their samplers' noise, nvJPEG, I420 on the device, CUDA
#    events, the sync count, img2img, the kernel profile). CI has no GPU, so these paths are new
#    here: if one fails, stop, and spend what is left of the budget on the fix.
smoke() {  # name, then bench arguments
  local name=$1 status; shift
  bench "$name" 90 --resolution 256 --steps 1,2 --batch 1,2 --compile eager --no-stock \
    --iterations 5 "$@"
  status=$?
  if [ "$status" -eq 124 ]; then echo "== $name ran out of time (slow, not failed): going on"
  elif [ "$status" -ne 0 ]; then echo "== $name failed: stopping before the compiled runs"; exit 1
  fi
}
smoke smoke-sd21 --arch sd21 --profile "$OUT/profile-smoke.md"
smoke smoke-sdxl --arch sdxl
# The first two time 1 and 2 steps on the same compiled buckets (one serves every step count).
# 1. SD-Turbo (SD 2.1) 512 px, batch 1 and 4, CUDA graphs, default tuning (cuDNN benchmark,
#    1x1 convolutions as matmuls), text encoder captured, nvJPEG in the engine, against stock
#    diffusers; where the time goes.
bench sd21-fast 190 --arch sd21 --resolution 512 --steps 1,2 --batch 1,4 --compile cuda-graphs \
  --compile-tuning fast --profile "$OUT/profile-sd21.md"
# 2. SDXL 1024 px compiled whole (the default scope), text encoders too, batch 1 and then 4 (the
#    second bucket is a second cold compile: it is cut off first), against stock diffusers;
#    where the time goes. The most time: batch 1 alone compiles the UNet (128 s in the last
#    run) and both text encoders before anything is timed.
bench sdxl-whole 330 --arch sdxl --resolution 1024 --steps 1,2 --batch 1,4 --compile cuda-graphs \
  --compile-tuning fast --profile "$OUT/profile-sdxl.md"
# 3. SD-Turbo again, from the compile cache step 1 filled: the warm start.
bench sd21-warm 60 --arch sd21 --resolution 512 --steps 1 --batch 1,4 --compile cuda-graphs \
  --compile-tuning fast --no-stock
# If time is left: SDXL compiled by blocks (the shorter cold start: the UNet's distinct blocks
# compiled, the text encoders captured without compiling), from its own empty cache, for the
# side-by-side of the two scopes; then SD-Turbo with inductor's defaults (what the first GPU run
# measured), then with max-autotune.
bench sdxl-blocks 130 --arch sdxl --resolution 1024 --steps 1 --batch 1 --compile cuda-graphs \
  --compile-tuning fast --compile-scope blocks --no-stock
bench sd21-off 120 --arch sd21 --resolution 512 --steps 1 --batch 1 --compile cuda-graphs \
  --compile-tuning off --no-stock
bench sd21-max 300 --arch sd21 --resolution 512 --steps 1 --batch 1 --compile cuda-graphs \
  --compile-tuning max --no-stock
cat "$OUT"/profile-*.md 2>/dev/null | head -80
# The smoke runs (eager, 256 px) stay out of the table; their JSON is in $OUT.
find "$OUT" -name '*.json' ! -name 'smoke-*' | sort | xargs python3 bench/gpu_summary.py \
  | tee "$OUT/summary.md"
