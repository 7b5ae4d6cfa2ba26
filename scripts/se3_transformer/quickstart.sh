#!/usr/bin/env bash
# Short CPU run on the embedded 1,000-molecule QM9 sample (about a minute), then inference with its checkpoint.
#   bash scripts/se3_transformer/quickstart.sh [extra training flags]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT_ROOT:-results/quickstart}/se3_transformer"
MODEL=(--num_layers 4 --num_degrees 3 --num_channels 16 --num_heads 4)
python -m se3_transformer.train --source sample --task homo "${MODEL[@]}" --batch_size 32 --learning_rate 1e-3 \
    --epochs 5 --eval_interval 1 --log_every 5 --log_dir "$OUT/train" --save_ckpt_path "$OUT/se3_transformer.pt" "$@"
python -m se3_transformer.inference --source sample --load_ckpt_path "$OUT/se3_transformer.pt" --split test \
    --output "$OUT/predictions_test.csv" --log_dir "$OUT/inference"
echo "checkpoint: $OUT/se3_transformer.pt  predictions: $OUT/predictions_test.csv"
