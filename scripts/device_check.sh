#!/usr/bin/env bash
# The GPU checks of deflect-min, for a lent CUDA machine (CI has no GPU).
#
#   bash scripts/device_check.sh              # every step; logs and CSVs go to $OUT
#   STEPS="1 2" bash scripts/device_check.sh  # some steps (one device call runs 10 min at most)
#
# 1. tests/test_gpu.py: CUDA equivalence, fused = explicit under autocast, deflection under
#    bf16 / fp16, sliding windows under autocast, training under 16-mixed and bf16-mixed;
# 2. deflect-train --smoke on the fixtures of every task with the precision chosen by "auto"
#    and with 16-mixed (the T4 path: fp16 + gradient scaler);
# 3. benchmarks.train_cost: a Scale-MAE ViT-L/16 + UPerNet run at real scale (random weights,
#    random 512 px scenes in the HLS layout) per method, and its projected run times;
# 4. benchmarks.peft_cost on ViT-L/16 (Scale-MAE's backbone) under bf16 autocast;
# 5. the CPU test suite on the machine's own torch (another version than CI's).
# On an H100 (2026-11-27) steps 1-3 took 7.5 minutes with an earlier, smaller step 3: run
# steps 1-2 and 3-5 as two calls. Python packages the machine lacks travel as wheels in .whl/
# (see the device tool's README).
set -uo pipefail
OUT=${OUT:-device_out}
STEPS=${STEPS:-1 2 3 4 5}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" MPLBACKEND=Agg
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="$PWD:/tmp/site"
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0
step() { echo; echo "=== $1 ($(date +%T))"; }
want() { [[ " $STEPS " == *" $1 "* ]]; }
ok() {  # after a pipeline: its first command's exit status decides
  local status=${PIPESTATUS[0]}
  [ "$status" = 0 ] || { failed=1; echo "FAILED (exit $status)"; }
}
quiet() { grep -vE "^\[|^smoke run:|Warning|warnings.warn|warn\(|^\s*$"; }

step "machine"
nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv,noheader
python3 - <<'PY' || { echo "imports failed: carry missing packages as wheels in .whl/"; exit 1; }
import sys, lightning, timm, torch, torchgeo, torchmetrics
print("python", sys.version.split()[0], "| torch", torch.__version__, "| timm", timm.__version__,
      "| lightning", lightning.__version__, "| torchmetrics", torchmetrics.__version__,
      "| torchgeo", torchgeo.__version__)
PY

if want 1; then
  step "1. tests/test_gpu.py"
  timeout 300 python3 -m pytest -o addopts="" -p no:cacheprovider tests/test_gpu.py -v \
    -rs 2>&1 | tee "$OUT/test_gpu.log" | grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|^E "
  ok
fi

if want 2; then
  step "2. deflect-train --smoke on the GPU"
  for run in "hls-burn-scars tests/data/hls_burn_scars 16-mixed" \
             "hls-burn-scars tests/data/hls_burn_scars auto" "mados tests/data/mados auto" \
             "m-brick-kiln tests/data/geobench auto" "m-so2sat tests/data/geobench 16-mixed"; do
    set -- $run
    timeout 120 python3 -m deflect_min.cli train --smoke --dataset "$1" --root "$2" \
      --accelerator gpu --precision "$3" --out "$tmp/r" --work-dir "$tmp/c" --name "$3" 2>&1 \
      | quiet | tail -n 3
    ok
  done
fi

if want 3; then
  step "3. benchmarks.train_cost: Scale-MAE ViT-L/16 + UPerNet at real scale"
  timeout 300 python3 -m benchmarks.train_cost --methods frozen,lora,deflect \
    --num-workers 8 --out "$OUT/train_cost_cuda_bf16.csv" 2>&1 | quiet
  ok
  timeout 120 python3 -m benchmarks.train_cost --methods deflect --num-workers 8 \
    --precision 16-mixed --out "$OUT/train_cost_cuda_fp16.csv" 2>&1 | quiet
  ok
fi

if want 4; then
  step "4. benchmarks.peft_cost on cuda, bf16 autocast"
  timeout 200 python3 -m benchmarks.peft_cost --model vit_large_patch16_224 --device cuda \
    --amp bf16 --methods frozen,lora,deflect --batch-size 8 --steps 6 --warmup 2 --no-flops \
    --out "$OUT/cuda_bf16_vit_large_patch16_224.csv" 2>&1 | quiet
  ok
fi

if want 5; then
  step "5. the CPU test suite on this machine's torch"
  timeout 150 python3 -m pytest -o addopts="" -p no:cacheprovider tests -q -n 8 \
    --ignore=tests/test_gpu.py 2>&1 | tee "$OUT/tests_cpu.log" | tail -n 15
  ok
fi
step "done"
exit $failed
