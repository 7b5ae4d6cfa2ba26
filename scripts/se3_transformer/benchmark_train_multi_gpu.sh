#!/usr/bin/env bash
# Multi-process training throughput with torchrun (per-process batch sizes 120 and 240, FP32 and AMP).
#   NPROC=8 bash scripts/se3_transformer/benchmark_train_multi_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
NPROC="${NPROC:-$( (command -v nvidia-smi >/dev/null && nvidia-smi -L | wc -l) || echo 2)}"
SOURCE="${SOURCE:-qm9pack}"
NUM_MOLECULES="${NUM_MOLECULES:-10000}"  # enough molecules for full batches of 1600
STEPS="${STEPS:-10}"
WARMUP="${WARMUP:-3}"
LOG_ROOT="${LOG_ROOT:-results/se3_transformer_benchmark/train_multi}"
for bs in 120 240; do
    for amp in "" "--amp"; do
        name="bs${bs}${amp:+_amp}"
        echo "=== train nproc=$NPROC batch_size=$bs ${amp:-fp32}"
        torchrun --standalone --nproc_per_node "$NPROC" -m se3_transformer.train --benchmark --source "$SOURCE" --num_molecules "$NUM_MOLECULES" \
            --batch_size "$bs" --benchmark_warmup "$WARMUP" --benchmark_steps "$STEPS" --silent \
            --log_dir "$LOG_ROOT/$name" $amp "$@"
        grep -o '"data": {"train_[^}]*}' "$LOG_ROOT/$name/log.json" | tail -2
    done
done
