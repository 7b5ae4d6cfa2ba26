#!/usr/bin/env bash
# MoFlow on CPU in about 3 minutes: preprocess QM9 (offline, from the qm9pack wheel), train the
# qm9_quick preset for 2 minutes, evaluate 1,000 samples at temperature 0.85, generate, plot.
# Measured on a loaded 2-core machine: validity without correction 81.7-86.2 % (4 seeds), see README.
set -euo pipefail
source "$(dirname "$0")/../env.sh"
OUT="${OUT_ROOT:-results/quickstart}/moflow"
DATA_DIR="${DATA_DIR:-data/moflow}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"   # 2 threads were 5-10x slower on a shared 2-core machine
[[ -f "$DATA_DIR/qm9_kekulized.npz" ]] || python -m moflow.preprocess --dataset qm9 --data_dir "$DATA_DIR"
python -m moflow.train --dataset qm9 --preset qm9_quick --data_dir "$DATA_DIR" --log_dir "$OUT" \
    --save_ckpt_path "$OUT/checkpoint.pt" --batch_size 256 --learning_rate 3e-3 --epochs 100 \
    --max_minutes "${MINUTES:-2}" --log_interval 50 --temperature 0.85 "$@"
python -m moflow.evaluate --load_ckpt_path "$OUT/checkpoint.pt" --log_dir "$OUT" --num_samples 1000 \
    --temperature 0.85
python -m moflow.predict --load_ckpt_path "$OUT/checkpoint.pt" --log_dir "$OUT" --num_samples 100 \
    --temperature 0.85   # -> $OUT/predictions_samples.smi and .png
python -m runtime.plot "$OUT" --output "$OUT/curves.png"
