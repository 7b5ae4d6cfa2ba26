#!/usr/bin/env bash
# Training throughput (molecules/s) and step latency percentiles, FP32 then AMP (bf16 on CPU).
#   BATCH_SIZES="64 128" CONFIG=small bash scripts/moflow/benchmark_training.sh
set -euo pipefail
source "$(dirname "$0")/../env.sh"
DATA_DIR="${DATA_DIR:-data/moflow}"
DATASET="${DATASET:-sample}"
CONFIG="${CONFIG:-small}"
OUT="${OUT:-results/moflow_benchmark}"
for bs in ${BATCH_SIZES:-64 128}; do
    for amp in "" "--amp"; do
        tag="train_bs${bs}${amp:+_amp}"
        echo "=== training benchmark: config=${CONFIG} batch_size=${bs} ${amp:-fp32} ==="
        python -m moflow.train --dataset "$DATASET" --data_dir "$DATA_DIR" --preset "$CONFIG" \
            --batch_size "$bs" $amp --benchmark --benchmark_warmup "${WARMUP:-3}" \
            --benchmark_steps "${STEPS:-10}" --val_samples 0 --save_ckpt_path "" --silent \
            --log_dir "$OUT/$tag" "$@"
        python - "$OUT/$tag/log.json" <<'PY'
import sys
from runtime.logging import read_dllogger
for r in read_dllogger(sys.argv[1]):
    if r["type"] == "LOG" and "train_throughput" in r["data"]:
        d = r["data"]
        print(f"throughput {d['train_throughput']:.1f} molecules/s | latency mean {d['train_latency_mean']:.1f} ms "
              f"p50 {d['train_latency_p50']:.1f} p90 {d['train_latency_p90']:.1f} "
              f"p95 {d['train_latency_p95']:.1f} p99 {d['train_latency_p99']:.1f} ms")
PY
    done
done
