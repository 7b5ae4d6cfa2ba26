#!/usr/bin/env bash
# Data-parallel training with torchrun (NCCL on GPUs, gloo on CPU); the batch size is per process.
# NPROC defaults to the GPUs torch sees (honours CUDA_VISIBLE_DEVICES), or 2 CPU processes without GPUs.
#   DATASET=qm9pack bash scripts/se3_transformer/train_multi_gpu.sh --amp true
set -euo pipefail
source "$(dirname "$0")/../env.sh"
GPUS="$(python -c "import torch; print(torch.cuda.device_count())")"
NPROC="${NPROC:-$(( GPUS > 0 ? GPUS : 2 ))}"
DATASET="${DATASET:-qm9pack}"
TASK="${TASK:-homo}"
DATA_DIR="${DATA_DIR:-data/se3_transformer}"
LOG_DIR="${LOG_DIR:-results/se3_transformer}"
DATA=(--dataset "$DATASET"); [[ "$DATASET" == sample ]] || DATA+=(--data_dir "$DATA_DIR")  # the sample is embedded
torchrun --standalone --nproc_per_node "$NPROC" -m se3_transformer.train "${DATA[@]}" --task "$TASK" \
    --log_dir "$LOG_DIR" --batch_size 240 --epochs 100 --learning_rate 0.002 \
    --weight_decay 0.1 --use_layer_norm true --norm true --eval_interval 20 --seed 42 \
    --save_ckpt_path "$LOG_DIR/se3_transformer_${TASK}.pt" "$@"
