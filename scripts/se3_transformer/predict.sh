#!/usr/bin/env bash
# Predict the test split with a trained checkpoint and write a CSV of predictions.
#   CKPT=results/se3_transformer/se3_transformer_homo.pt SOURCE=qm9pack bash scripts/se3_transformer/predict.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
CKPT="${CKPT:-results/se3_transformer/se3_transformer_homo.pt}"
SOURCE="${SOURCE:-qm9pack}"
LOG_DIR="${LOG_DIR:-results/se3_transformer_inference}"
python -m se3_transformer.inference --source "$SOURCE" --load_ckpt_path "$CKPT" --split test \
    --output "$LOG_DIR/predictions_test.csv" --log_dir "$LOG_DIR" "$@"
