#!/usr/bin/env bash
# Single-process MoFlow training (CPU or one GPU). Extra flags are passed to moflow.train.
#   bash scripts/moflow/train.sh --epochs 5
#   DATASET=zinc250k bash scripts/moflow/train.sh --amp        # reference zinc250k config
set -euo pipefail
source "$(dirname "$0")/../env.sh"
DATA_DIR="${DATA_DIR:-data/moflow}"
DATASET="${DATASET:-sample}"
LOG_DIR="${LOG_DIR:-results/moflow}"
python -m moflow.train --dataset "$DATASET" --data_dir "$DATA_DIR" --log_dir "$LOG_DIR" \
    --save_ckpt_path "$LOG_DIR/checkpoint.pt" "$@"
