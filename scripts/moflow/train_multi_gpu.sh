#!/usr/bin/env bash
# Data-parallel MoFlow training with torchrun (NCCL on GPUs, gloo on CPU).
#   NPROC=8 DATASET=zinc250k bash scripts/moflow/train_multi_gpu.sh --amp --epochs 300 --batch_size 512
set -euo pipefail
cd "$(dirname "$0")/../.."
NPROC="${NPROC:-$( (command -v nvidia-smi >/dev/null && nvidia-smi -L | wc -l) || echo 2)}"
DATA_DIR="${DATA_DIR:-data/moflow}"
DATASET="${DATASET:-zinc250k}"
LOG_DIR="${LOG_DIR:-results/moflow}"
torchrun --standalone --nproc_per_node "$NPROC" -m moflow.train --dataset "$DATASET" --data_dir "$DATA_DIR" \
    --log_dir "$LOG_DIR" --save_ckpt_path "$LOG_DIR/moflow.pt" "$@"
