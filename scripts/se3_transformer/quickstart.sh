#!/usr/bin/env bash
# Short CPU run on the embedded 1,000-molecule QM9 sample (about a minute), then the test MAE and predictions.
#   bash scripts/se3_transformer/quickstart.sh [extra training flags]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT_ROOT:-results/quickstart}/se3_transformer"
python -m se3_transformer.train --dataset sample --task homo --preset small --batch_size 32 --learning_rate 1e-3 \
    --epochs 5 --eval_interval 1 --log_interval 5 --log_dir "$OUT/train" --save_ckpt_path "$OUT/se3_transformer.pt" "$@"
python -m se3_transformer.evaluate --load_ckpt_path "$OUT/se3_transformer.pt" --split test --log_dir "$OUT/evaluate"
python -m se3_transformer.predict --load_ckpt_path "$OUT/se3_transformer.pt" --split test \
    --output "$OUT/predictions_test.csv" --log_dir "$OUT/predict"
echo "checkpoint: $OUT/se3_transformer.pt  predictions: $OUT/predictions_test.csv"
