#!/usr/bin/env bash
# MoFlow on CPU in ~2 minutes: preprocess the embedded MOSES sample, train briefly, generate, evaluate.
set -euo pipefail
source "$(dirname "$0")/../env.sh"
OUT="${OUT_ROOT:-results/quickstart}/moflow"
DATA_DIR="${DATA_DIR:-$OUT/data}"
python -m moflow.preprocess --dataset sample --data_dir "$DATA_DIR"
python -m moflow.train --dataset sample --preset small --data_dir "$DATA_DIR" --log_dir "$OUT" \
    --save_ckpt_path "$OUT/moflow.pt" --epochs 1 --max_minutes "${MINUTES:-1.5}" --batch_size 64 \
    --val_samples 50 "$@"
python -m moflow.generate --load_ckpt_path "$OUT/moflow.pt" --log_dir "$OUT" --num_samples 100 \
    --output "$OUT/generated.smi" --png "$OUT/generated.png"
python -m moflow.evaluate --load_ckpt_path "$OUT/moflow.pt" --log_dir "$OUT" --num_samples 500 \
    --num_molecules 200 --output "$OUT/metrics.json"
