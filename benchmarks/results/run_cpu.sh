#!/bin/sh
# The CPU runs of book/cost.md. The 2 cores are shared with other jobs: one torch thread per
# worker, and the ratios are read on the workers' CPU time (wall clock reported too).
# ViT-B/16 is issue 8's target setting, every method. ViT-S/8 and ViT-L/16 are smaller runs
# (smaller batches, fewer methods and rounds) to fit the time this session had.
set -e
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
case "$1" in
base)
$PY -m benchmarks.peft_cost --model vit_base_patch16_224 --batch-size 8 --img-size 224 --bands 12 \
    --steps 7 --warmup 1 --threads 1 --out benchmarks/results/cpu_vit_base_patch16_224.csv ;;
small-large)
$PY -m benchmarks.peft_cost --model vit_small_patch8_224 --batch-size 2 --img-size 224 --bands 12 \
    --steps 3 --warmup 1 --threads 1 --methods frozen,deflect,lora,norm \
    --out benchmarks/results/cpu_vit_small_patch8_224.csv
$PY -m benchmarks.peft_cost --model vit_large_patch16_224 --batch-size 1 --img-size 224 --bands 12 \
    --steps 3 --warmup 1 --threads 1 --methods frozen,deflect,lora \
    --out benchmarks/results/cpu_vit_large_patch16_224.csv ;;
*) echo "usage: $0 base|small-large" >&2; exit 2 ;;
esac
