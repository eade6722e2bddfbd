#!/usr/bin/env bash
# Short la vs concutmix runs on the CIFAR-10 JPEG tree at imb 100 (the cifar10_imb100 preset with its
# schedule scaled down to EPOCHS epochs of at most STEPS steps of 256 images), on the CPU; evaluated on the
# full balanced test set after the last epoch. Usage: benchmarks/cpu_short_runs.sh DATA_ROOT OUT_DIR
set -euo pipefail
data_root=${1:?path of the CIFAR-10 JPEG tree (train/ and test/)}
out=${2:?output folder}
epochs=${EPOCHS:-3}
steps=${STEPS:-16}
python=${PYTHON:-python}
mkdir -p "$out"
for method in la concutmix; do
  start=$(date +%s)
  "$python" -m ccmix train --preset cifar10_imb100 --out "$out/$method" \
    --set dataset=folder --set data_root="$data_root" --set method="$method" --set epochs="$epochs" \
    --set warmup_epochs=1 --set milestones= --set l_d_warm=$((epochs / 2)) --set device=cpu --set seed=0 \
    --set max_steps_per_epoch="$steps" \
    --set eval_interval="$epochs" --set progress=false
  echo "{\"method\": \"$method\", \"wall_seconds\": $(( $(date +%s) - start ))}" >> "$out/wall_times.jsonl"
done
