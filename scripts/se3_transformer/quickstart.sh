#!/usr/bin/env bash
# Short CPU run on the embedded 1,000-molecule QM9 sample (about a minute): train 5 epochs, then the
# test MAE beside the predict-the-training-mean baseline, per-molecule predictions and curves.png.
#   bash scripts/se3_transformer/quickstart.sh [extra training flags]
# Relative paths are taken from the caller's directory.
set -euo pipefail
source "$(dirname "$0")/../env.sh"
OUT="${OUT_ROOT:-results/quickstart}/se3_transformer"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
python -m se3_transformer.train --dataset sample --task homo --preset small --batch_size 32 --learning_rate 1e-3 \
    --epochs 5 --eval_interval 1 --log_interval 5 --log_dir "$OUT" --save_ckpt_path "$OUT/checkpoint.pt" "$@"
python -m se3_transformer.evaluate --load_ckpt_path "$OUT/checkpoint.pt" --split test --log_dir "$OUT"
python -m se3_transformer.predict --load_ckpt_path "$OUT/checkpoint.pt" --split test \
    --output "$OUT/predictions_test.csv" --log_dir "$OUT"
python -m runtime.plot "$OUT"
echo "checkpoint: $OUT/checkpoint.pt  predictions: $OUT/predictions_test.csv  curves: $OUT/curves.png"
