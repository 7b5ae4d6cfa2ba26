#!/usr/bin/env bash
# Data-parallel training with torchrun (NCCL on GPUs, gloo on CPU); batch size is per process.
#   NPROC=8 SOURCE=qm9pack bash scripts/se3_transformer/train_multi_gpu.sh --amp
set -euo pipefail
cd "$(dirname "$0")/../.."
NPROC="${NPROC:-$( (command -v nvidia-smi >/dev/null && nvidia-smi -L | wc -l) || echo 2)}"
SOURCE="${SOURCE:-qm9pack}"
TASK="${TASK:-homo}"
DATA_DIR="${DATA_DIR:-data_cache/se3_transformer}"
LOG_DIR="${LOG_DIR:-results/se3_transformer}"
torchrun --standalone --nproc_per_node "$NPROC" -m se3_transformer.train --source "$SOURCE" --task "$TASK" \
    --data_dir "$DATA_DIR" --log_dir "$LOG_DIR" --batch_size 240 --epochs 100 --learning_rate 0.002 --min_lr 1e-5 \
    --weight_decay 0.1 --eval_interval 20 --precompute_bases --seed 42 \
    --save_ckpt_path "$LOG_DIR/se3_transformer_${TASK}.pt" "$@"
