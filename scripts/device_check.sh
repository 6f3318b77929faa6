#!/usr/bin/env bash
# The GPU checks of deflect-min, in one short script for a lent CUDA machine (CI has no GPU).
#
#   bash scripts/device_check.sh            # logs and CSVs go to $OUT (default: device_out/)
#
# 1. tests/test_gpu.py: CUDA equivalence, fused = explicit under autocast, deflection under
#    bf16 / fp16, sliding windows under autocast, training under 16-mixed and bf16-mixed;
# 2. deflect-train --smoke on the fixtures of every task with the precision chosen by "auto"
#    and with 16-mixed (the T4 path: fp16 + gradient scaler);
# 3. benchmarks.train_cost: a Scale-MAE ViT-L/16 + UPerNet run at real scale (random weights,
#    random 512 px scenes in the HLS layout) per method, and its projected run times;
# 4. benchmarks.peft_cost on ViT-L/16 (Scale-MAE's backbone) under bf16 autocast;
# 5. the CPU test suite on the machine's own torch (another version than CI's).
# Python packages the machine lacks travel as wheels in .whl/ (see the device tool's README).
# On an H100 steps 1-3 took 7.5 minutes (2026-11-27): give the call 12 minutes or run parts.
set -u
OUT=${OUT:-device_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" MPLBACKEND=Agg
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="$PWD:/tmp/site"
fi
step() { echo; echo "=== $1 ($(date +%T))"; }
pyt() { python3 -m pytest -o addopts="" -p no:cacheprovider "$@"; }

step "machine"
nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv,noheader
python3 -c "import sys, torch, timm, lightning, torchmetrics, torchgeo; print('python', sys.version.split()[0], '| torch', torch.__version__, '| timm', timm.__version__, '| lightning', lightning.__version__, '| torchmetrics', torchmetrics.__version__, '| torchgeo', torchgeo.__version__)" \
  || { echo "imports failed: carry the missing packages as wheels in .whl/"; exit 1; }

step "1. tests/test_gpu.py"
timeout 300 python3 -m pytest -o addopts="" -p no:cacheprovider tests/test_gpu.py -v -rs 2>&1 \
  | tee "$OUT/test_gpu.log" | grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|^E "

step "2. deflect-train --smoke on the GPU"
tmp=$(mktemp -d)
for run in "hls-burn-scars tests/data/hls_burn_scars 16-mixed" \
           "hls-burn-scars tests/data/hls_burn_scars auto" "mados tests/data/mados auto" \
           "m-brick-kiln tests/data/geobench auto" "m-so2sat tests/data/geobench 16-mixed"; do
  set -- $run
  timeout 120 python3 -m deflect_min.cli train --smoke --dataset "$1" --root "$2" \
    --accelerator gpu --precision "$3" --out "$tmp/r" --work-dir "$tmp/c" --name "$3" 2>&1 \
    | grep -vE "^smoke run:|UserWarning|warnings.warn|^\s*$" | tail -n 3
done

step "3. benchmarks.train_cost: Scale-MAE ViT-L/16 + UPerNet at real scale"
timeout 300 python3 -m benchmarks.train_cost --methods frozen,lora,deflect --steps 20 \
  --num-workers 8 --out "$OUT/train_cost_cuda_bf16.csv" 2>&1 | grep -vE "Warning|warn\("
timeout 120 python3 -m benchmarks.train_cost --methods deflect --steps 20 --num-workers 8 \
  --precision 16-mixed --out "$OUT/train_cost_cuda_fp16.csv" 2>&1 | grep -vE "Warning|warn\("

step "4. benchmarks.peft_cost on cuda, bf16 autocast"
timeout 200 python3 -m benchmarks.peft_cost --model vit_large_patch16_224 --device cuda \
  --amp bf16 --methods frozen,lora,deflect --batch-size 8 --steps 6 --warmup 2 --no-flops \
  --out "$OUT/cuda_bf16_vit_large_patch16_224.csv" 2>&1 | grep -vE "^\[|UserWarning|warnings.warn"

step "5. the CPU test suite on this machine's torch"
timeout 150 python3 -m pytest -o addopts="" -p no:cacheprovider tests -q -n 8 \
  --ignore=tests/test_gpu.py 2>&1 | tee "$OUT/tests_cpu.log" | tail -n 15
step "done"
