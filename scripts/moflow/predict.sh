#!/usr/bin/env bash
# Generate molecules (SMILES + PNG grid) and evaluate them with a trained checkpoint.
#   bash scripts/moflow/predict.sh --num_samples 1000 --temperature 0.6
set -euo pipefail
source "$(dirname "$0")/../env.sh"
LOG_DIR="${LOG_DIR:-results/moflow}"
CKPT="${CKPT:-$LOG_DIR/moflow.pt}"
python -m moflow.generate --load_ckpt_path "$CKPT" --log_dir "$LOG_DIR" \
    --output "$LOG_DIR/generated.smi" --png "$LOG_DIR/generated.png" "$@"
python -m moflow.evaluate --load_ckpt_path "$CKPT" --log_dir "$LOG_DIR" --output "$LOG_DIR/metrics.json" \
    --num_samples "${EVAL_SAMPLES:-1000}"
