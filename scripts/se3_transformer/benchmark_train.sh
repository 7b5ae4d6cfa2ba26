#!/usr/bin/env bash
# Training throughput (molecules/s), latency percentiles (ms) and peak memory at batch sizes 120 and 240,
# FP32 and AMP, plus low-memory mode. Prints figures; asserts nothing. Extra flags go to every run, e.g.
#   bash scripts/se3_transformer/benchmark_train.sh --preset small
# With --baseline REV (or BASELINE=REV): the model code of this checkout against revision REV instead,
# side by side: scripts/se3_transformer/bench_model.py (training step, PRESET default nvidia, batch
# BATCH_SIZE default 32) run ROUNDS times (default 5) per tree, interleaved, by runtime.compare, which
# prints the medians and ratios (working / baseline; COMPARE_JSON=FILE keeps them). Extra flags then go
# to bench_model.py (e.g. --steps 5 --precompute_bases --compile).
#   bash scripts/se3_transformer/benchmark_train.sh --baseline 11b8e8f
set -euo pipefail
source "$(dirname "$0")/../env.sh"
take_baseline "$@"
if [ -n "$BASELINE" ]; then
    compare_baseline 5 python "$MOLRECIPES_ROOT/scripts/se3_transformer/bench_model.py" --phase train --preset "${PRESET:-nvidia}" \
        --batch_size "${BATCH_SIZE:-32}" ${ARGS[@]+"${ARGS[@]}"}
    exit 0
fi
DATASET="${DATASET:-qm9pack}"
NUM_MOLECULES="${NUM_MOLECULES:-10000}"  # enough molecules for full batches of 1600
STEPS="${STEPS:-10}"
WARMUP="${WARMUP:-3}"
BATCH_SIZES="${BATCH_SIZES:-120 240}"
LOG_ROOT="${LOG_ROOT:-results/se3_transformer_benchmark/train}"
for bs in $BATCH_SIZES; do
    for mode in fp32 amp fp32_low_memory; do
        flags=(--amp false --low_memory false)
        [[ "$mode" == amp ]] && flags=(--amp true --low_memory false)
        [[ "$mode" == *low_memory ]] && flags=(--amp false --low_memory true)
        echo "=== train batch_size=$bs mode=$mode"
        python -m se3_transformer.train --benchmark true --dataset "$DATASET" --num_molecules "$NUM_MOLECULES" \
            --batch_size "$bs" --benchmark_warmup "$WARMUP" --benchmark_steps "$STEPS" --silent true \
            --log_dir "$LOG_ROOT/bs${bs}_${mode}" --dllogger_name bench_log.json "${flags[@]}" ${ARGS[@]+"${ARGS[@]}"}
        grep -o '"data": {"train_[^}]*}' "$LOG_ROOT/bs${bs}_${mode}/bench_log.json" | tail -1
        grep -o '"data": {"peak_memory_mb[^}]*}' "$LOG_ROOT/bs${bs}_${mode}/bench_log.json" | tail -1
    done
done
