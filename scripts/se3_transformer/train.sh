#!/usr/bin/env bash
# Full QM9 training with the reference settings (7 layers, degrees 0-3, 32 channels, 8 heads, batch 240,
# lr 0.002 cosine to 1e-5, weight decay 0.1, 100 epochs, layer norm + equivariant norm, precomputed bases).
#   SOURCE=qm9pack TASK=homo bash scripts/se3_transformer/train.sh [--amp] [more flags]
set -euo pipefail
cd "$(dirname "$0")/../.."
SOURCE="${SOURCE:-qm9pack}"
TASK="${TASK:-homo}"
DATA_DIR="${DATA_DIR:-data_cache/se3_transformer}"
LOG_DIR="${LOG_DIR:-results/se3_transformer}"
python -m se3_transformer.train --source "$SOURCE" --task "$TASK" --data_dir "$DATA_DIR" --log_dir "$LOG_DIR" \
    --batch_size 240 --epochs 100 --learning_rate 0.002 --min_lr 1e-5 --weight_decay 0.1 --eval_interval 20 \
    --precompute_bases --seed 42 --save_ckpt_path "$LOG_DIR/se3_transformer_${TASK}.pt" "$@"
