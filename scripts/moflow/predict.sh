#!/usr/bin/env bash
# Generate molecules (SMILES + PNG grid) and evaluate them with a trained checkpoint.
#   bash scripts/moflow/predict.sh --num_samples 1000 --temperature 0.6
set -euo pipefail
source "$(dirname "$0")/../env.sh"
LOG_DIR="${LOG_DIR:-results/moflow}"
CKPT="${CKPT:-$LOG_DIR/checkpoint.pt}"
python -m moflow.generate --load_ckpt_path "$CKPT" --log_dir "$LOG_DIR" "$@"   # LOG_DIR/predictions_samples.smi
python -m moflow.evaluate --load_ckpt_path "$CKPT" --log_dir "$LOG_DIR" \
    --num_samples "${EVAL_SAMPLES:-1000}"
