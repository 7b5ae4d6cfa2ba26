#!/usr/bin/env bash
# Training throughput (structures/s) and peak memory per rank, gp_size 1 (1 process) vs 2 (2 processes),
# then parameter counts of every preset. Prints figures; asserts nothing.
#   MODEL=dimenetpp PRESET=base BATCH_SIZE=4 bash scripts/graph_parallel/benchmark.sh
set -euo pipefail
source "$(dirname "$0")/../env.sh"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
MODEL="${MODEL:-dimenetpp}"
PRESET="${PRESET:-base}"
COMMON=(--model "$MODEL" --preset "$PRESET" --batch_size "${BATCH_SIZE:-4}" --benchmark --silent
        --benchmark_warmup "${WARMUP:-3}" --benchmark_steps "${STEPS:-10}" --ema_decay 0)
echo "=== $MODEL/$PRESET gp_size=1 (1 process) ==="
python -m graph_parallel.train "${COMMON[@]}" --gp_size 1 --log_dir "/tmp/gp_bench_${MODEL}_gp1" "$@" | grep BENCHMARK
echo "=== $MODEL/$PRESET gp_size=2 (2 processes) ==="
torchrun --standalone --nproc_per_node 2 -m graph_parallel.train "${COMMON[@]}" --gp_size 2 \
    --log_dir "/tmp/gp_bench_${MODEL}_gp2" "$@" | grep BENCHMARK
echo "=== parameter counts ==="
python -m graph_parallel.param_counts
