#!/usr/bin/env bash
# Trains the three built-in models at once on one GPU (how the shipped weights were made).
# Usage: scripts/train_builtin_gpu.sh DATA_ROOT OUT_DIR TIME_LIMIT_SECONDS
#   DATA_ROOT holds photos/train and photos/val (shared/data in the team's checkout).
set -uo pipefail
data=$1; out=$2; tl=$3
mkdir -p "$out" /tmp/runs
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
for s in 4 8 16; do
  python3 -m clipsr_cli train --config "recipes/lite-x$s.toml" --data "$data/photos/train" \
    --val "$data/photos/val" --out "/tmp/runs/x$s" --time-limit "$tl" --device cuda:0 \
    >"/tmp/runs/log-x$s.txt" 2>&1 &
done
wait
for s in 4 8 16; do
  python3 scripts/export_builtin.py "/tmp/runs/x$s/model.safetensors" "$out/clipsr-lite-x$s.safetensors"
  echo "== x$s"; tail -n 25 "/tmp/runs/log-x$s.txt"; cat "/tmp/runs/x$s/metrics.jsonl" | grep -i val | tail -n 3
done
