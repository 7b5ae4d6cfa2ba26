#!/usr/bin/env bash
# Multi-process training throughput with torchrun (per-process batch sizes 120 and 240, FP32 and AMP).
# NPROC defaults to the GPUs torch sees (honours CUDA_VISIBLE_DEVICES), or 2 CPU processes without GPUs.
#   bash scripts/se3_transformer/benchmark_train_multi_gpu.sh [extra flags]
set -euo pipefail
source "$(dirname "$0")/../env.sh"
GPUS="$(python -c "import torch; print(torch.cuda.device_count())")"
NPROC="${NPROC:-$(( GPUS > 0 ? GPUS : 2 ))}"
DATASET="${DATASET:-qm9pack}"
NUM_MOLECULES="${NUM_MOLECULES:-10000}"
STEPS="${STEPS:-10}"
WARMUP="${WARMUP:-3}"
LOG_ROOT="${LOG_ROOT:-results/se3_transformer_benchmark/train_multi}"
for bs in 120 240; do
    for amp in false true; do
        name="bs${bs}_amp_${amp}"
        echo "=== train nproc=$NPROC batch_size=$bs amp=$amp"
        torchrun --standalone --nproc_per_node "$NPROC" -m se3_transformer.train --benchmark true \
            --dataset "$DATASET" --num_molecules "$NUM_MOLECULES" --batch_size "$bs" --benchmark_warmup "$WARMUP" \
            --benchmark_steps "$STEPS" --silent true --log_dir "$LOG_ROOT/$name" --amp "$amp" "$@"
        grep -o '"data": {"train_[^}]*}' "$LOG_ROOT/$name/log.json" | tail -1
    done
done
