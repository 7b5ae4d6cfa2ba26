#!/usr/bin/env bash
# Training throughput (molecules/ms), latency percentiles and peak memory at batch sizes 120 and 240,
# FP32 and AMP, plus low-memory mode. Prints figures; asserts nothing. Extra flags go to every run, e.g.
#   bash scripts/se3_transformer/benchmark_train.sh --num_layers 4 --num_channels 16 --num_degrees 3 --num_heads 4
set -euo pipefail
cd "$(dirname "$0")/../.."
SOURCE="${SOURCE:-qm9pack}"
NUM_MOLECULES="${NUM_MOLECULES:-10000}"  # enough molecules for full batches of 1600
STEPS="${STEPS:-10}"
WARMUP="${WARMUP:-3}"
BATCH_SIZES="${BATCH_SIZES:-120 240}"
LOG_ROOT="${LOG_ROOT:-results/se3_transformer_benchmark/train}"
for bs in $BATCH_SIZES; do
    for mode in fp32 amp fp32_low_memory; do
        flags=()
        [[ "$mode" == amp ]] && flags+=(--amp)
        [[ "$mode" == *low_memory ]] && flags+=(--low_memory)
        echo "=== train batch_size=$bs mode=$mode"
        python -m se3_transformer.train --benchmark --source "$SOURCE" --num_molecules "$NUM_MOLECULES" --batch_size "$bs" \
            --benchmark_warmup "$WARMUP" --benchmark_steps "$STEPS" --silent --log_dir "$LOG_ROOT/bs${bs}_${mode}" \
            "${flags[@]}" "$@"
        grep -o '"data": {"train_[^}]*}' "$LOG_ROOT/bs${bs}_${mode}/log.json" | tail -2
    done
done
