#!/usr/bin/env bash
# Data-parallel MoFlow training with torchrun (NCCL on GPUs, gloo on CPU).
#   NPROC=8 DATASET=zinc250k bash scripts/moflow/train_multi_gpu.sh --amp --epochs 300 --batch_size 512
set -euo pipefail
source "$(dirname "$0")/../env.sh"
# torch counts the GPUs it can use (honours CUDA_VISIBLE_DEVICES); no GPU: 2 CPU processes
NPROC="${NPROC:-$(python -c "import torch; print(torch.cuda.device_count() or 2)")}"
DATA_DIR="${DATA_DIR:-data/moflow}"
DATASET="${DATASET:-zinc250k}"
LOG_DIR="${LOG_DIR:-results/moflow}"
torchrun --standalone --nproc_per_node "$NPROC" -m moflow.train --dataset "$DATASET" --data_dir "$DATA_DIR" \
    --log_dir "$LOG_DIR" --save_ckpt_path "$LOG_DIR/checkpoint.pt" "$@"
