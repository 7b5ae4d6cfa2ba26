#!/usr/bin/env bash
# Training throughput (molecules/s) and step latency percentiles of `python -m moflow.train --benchmark`,
# FP32 then AMP (bf16 autocast on CPU). Extra flags go to moflow.train.
#   BATCH_SIZES="64 128" PRESET=small bash scripts/moflow/benchmark_training.sh
#   DATASET=qm9 PRESET=qm9 BATCH_SIZES=128 bash scripts/moflow/benchmark_training.sh --compile
# With --baseline REV (or BASELINE=REV): the model code of this checkout against revision REV instead,
# side by side: scripts/moflow/bench_model.py (training step, PRESET default qm9, batch BATCH_SIZE
# default 128) run ROUNDS times (default 5) per tree, interleaved, by runtime.compare, which prints
# the medians and ratios (working / baseline; COMPARE_JSON=FILE keeps them). Extra flags then go to
# bench_model.py (e.g. --steps 20 --compile).
#   bash scripts/moflow/benchmark_training.sh --baseline 11b8e8f
set -euo pipefail
source "$(dirname "$0")/../env.sh"
take_baseline "$@"
DATA_DIR="${DATA_DIR:-data/moflow}"
if [ -n "$BASELINE" ]; then
    PRESET="${PRESET:-qm9}"
    data=()
    [ -f "$DATA_DIR/${PRESET}_kekulized.npz" ] && data=(--data_dir "$DATA_DIR")  # else random graphs
    compare_baseline 5 python "$MOLRECIPES_ROOT/scripts/moflow/bench_model.py" --phase train --preset "$PRESET" \
        --batch_size "${BATCH_SIZE:-128}" ${data[@]+"${data[@]}"} ${ARGS[@]+"${ARGS[@]}"}
    exit 0
fi
DATASET="${DATASET:-sample}"
PRESET="${PRESET:-${CONFIG:-small}}"
OUT="${OUT:-results/moflow_benchmark}"
for bs in ${BATCH_SIZES:-64 128}; do
    for amp in "" "--amp"; do
        tag="train_bs${bs}${amp:+_amp}"
        echo "=== training benchmark: preset=${PRESET} batch_size=${bs} ${amp:-fp32} ==="
        python -m moflow.train --dataset "$DATASET" --data_dir "$DATA_DIR" --preset "$PRESET" \
            --batch_size "$bs" $amp --benchmark --benchmark_warmup "${WARMUP:-3}" \
            --benchmark_steps "${STEPS:-10}" --val_samples 0 --val_molecules 0 --silent \
            --log_dir "$OUT/$tag" --dllogger_name bench_log.json ${ARGS[@]+"${ARGS[@]}"}
        python - "$OUT/$tag/bench_log.json" <<'PY'
import sys
from runtime.logging import read_dllogger
for r in read_dllogger(sys.argv[1]):
    d = r.get("data", {})
    if r["type"] == "LOG" and "train_throughput" in d:
        print(f"throughput {d['train_throughput']:.1f} molecules/s | latency mean {d['train_latency_mean']:.1f} ms "
              f"p50 {d['train_latency_p50']:.1f} p90 {d['train_latency_p90']:.1f} "
              f"p95 {d['train_latency_p95']:.1f} p99 {d['train_latency_p99']:.1f} ms")
    if r["type"] == "LOG" and "peak_memory_mb" in d:
        print(f"peak memory {d['peak_memory_mb']:.0f} MB")
PY
    done
done
