#!/usr/bin/env bash
# MAE of a trained checkpoint on a split (beside the predict-the-training-mean baseline), then its
# per-molecule predictions as CSV. Dataset, subset, task and architecture come from the checkpoint.
#   CKPT=results/se3_transformer/se3_transformer_homo.pt SPLIT=test bash scripts/se3_transformer/predict.sh [flags]
set -euo pipefail
source "$(dirname "$0")/../env.sh"
CKPT="${CKPT:-results/se3_transformer/se3_transformer_homo.pt}"
SPLIT="${SPLIT:-test}"
LOG_DIR="${LOG_DIR:-results/se3_transformer}"
python -m se3_transformer.evaluate --load_ckpt_path "$CKPT" --split "$SPLIT" --log_dir "$LOG_DIR/evaluate" "$@"
python -m se3_transformer.predict --load_ckpt_path "$CKPT" --split "$SPLIT" \
    --output "$LOG_DIR/predictions_${SPLIT}.csv" --log_dir "$LOG_DIR" "$@"
