#!/usr/bin/env bash
# This project's DimeNet++ vs PyG's DimeNetPlusPlus: same molecules, edges, triplets, hyperparameters
# and weights, interleaved in one process; training (energy + forces, backward, AdamW) and inference.
# Prints a table per batch size (ours / PyG ratios) and a BENCH line; asserts nothing.
#   PRESET=base BATCH_SIZES="8 32" ROUNDS=5 bash scripts/graph_parallel/benchmark_vs_pyg.sh
set -euo pipefail
# Two models in one process: their peak memory compares only under an allocator that returns freed memory.
export MOLRECIPES_ALLOCATOR="${MOLRECIPES_ALLOCATOR:-system}"
source "$(dirname "$0")/../env.sh"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
for bs in ${BATCH_SIZES:-8 32}; do
    echo "=== DimeNet++ ${PRESET:-base}, batch $bs ==="
    python "$(dirname "$0")/benchmark_vs_pyg.py" --preset "${PRESET:-base}" --batch_size "$bs" \
        --rounds "${ROUNDS:-5}" --warmup "${WARMUP:-2}" "$@"
done
