#!/usr/bin/env bash
# Inference (sampling z -> molecule graph) throughput and latency percentiles, FP32 then AMP.
#   CKPT=results/moflow/moflow.pt BATCH_SIZES="100 1000" bash scripts/moflow/benchmark_inference.sh
set -euo pipefail
source "$(dirname "$0")/../env.sh"
CKPT="${CKPT:-results/moflow/moflow.pt}"
OUT="${OUT:-results/moflow_benchmark}"
for bs in ${BATCH_SIZES:-100 1000}; do
    for amp in "" "--amp"; do
        tag="infer_bs${bs}${amp:+_amp}"
        echo "=== inference benchmark: batch_size=${bs} ${amp:-fp32} ==="
        python -m moflow.generate --load_ckpt_path "$CKPT" --batch_size "$bs" $amp --benchmark \
            --benchmark_warmup "${WARMUP:-3}" --benchmark_steps "${STEPS:-20}" --silent \
            --log_dir "$OUT/$tag" "$@"
        python - "$OUT/$tag/generate_log.json" <<'PY'
import sys
from runtime.logging import read_dllogger
for r in read_dllogger(sys.argv[1]):
    if r["type"] == "LOG" and "inference_throughput" in r["data"]:
        d = r["data"]
        print(f"throughput {d['inference_throughput']:.1f} molecules/s | latency mean "
              f"{d['inference_latency_mean']:.1f} ms p50 {d['inference_latency_p50']:.1f} "
              f"p90 {d['inference_latency_p90']:.1f} p95 {d['inference_latency_p95']:.1f} "
              f"p99 {d['inference_latency_p99']:.1f} ms")
PY
    done
done
