#!/usr/bin/env bash
# Inference (sampling z -> molecule graph) throughput (molecules/s) and latency percentiles of
# `python -m moflow.generate --benchmark`, FP32 then AMP. Extra flags go to moflow.generate.
#   CKPT=results/moflow/checkpoint.pt BATCH_SIZES="100 1000" bash scripts/moflow/benchmark_inference.sh
# With --baseline REV (or BASELINE=REV): the model code of this checkout against revision REV instead,
# side by side: scripts/moflow/bench_model.py (reverse pass of a freshly initialised model, no
# checkpoint needed; PRESET default qm9, batch BATCH_SIZE default 1000) run ROUNDS times (default 5)
# per tree, interleaved, by runtime.compare, which prints the medians and ratios (working / baseline;
# COMPARE_JSON=FILE keeps them). Extra flags then go to bench_model.py (e.g. --steps 20 --compile).
#   bash scripts/moflow/benchmark_inference.sh --baseline 11b8e8f
set -euo pipefail
source "$(dirname "$0")/../env.sh"
take_baseline "$@"
if [ -n "$BASELINE" ]; then
    PRESET="${PRESET:-qm9}"
    DATA_DIR="${DATA_DIR:-data/moflow}"
    data=()
    [ -f "$DATA_DIR/${PRESET}_kekulized.npz" ] && data=(--data_dir "$DATA_DIR")  # ActNorm init data; else random
    compare_baseline 5 python "$MOLRECIPES_ROOT/scripts/moflow/bench_model.py" --phase reverse --preset "$PRESET" \
        --reverse_batch_size "${BATCH_SIZE:-1000}" ${data[@]+"${data[@]}"} ${ARGS[@]+"${ARGS[@]}"}
    exit 0
fi
CKPT="${CKPT:-results/moflow/checkpoint.pt}"
OUT="${OUT:-results/moflow_benchmark}"
for bs in ${BATCH_SIZES:-100 1000}; do
    for amp in "" "--amp"; do
        tag="infer_bs${bs}${amp:+_amp}"
        echo "=== inference benchmark: batch_size=${bs} ${amp:-fp32} ==="
        python -m moflow.generate --load_ckpt_path "$CKPT" --batch_size "$bs" $amp --benchmark \
            --benchmark_warmup "${WARMUP:-3}" --benchmark_steps "${STEPS:-20}" --silent \
            --log_dir "$OUT/$tag" --dllogger_name bench_log.json ${ARGS[@]+"${ARGS[@]}"}
        python - "$OUT/$tag/bench_log.json" <<'PY'
import sys
from runtime.logging import read_dllogger
for r in read_dllogger(sys.argv[1]):
    d = r.get("data", {})
    if r["type"] == "LOG" and "inference_throughput" in d:
        print(f"throughput {d['inference_throughput']:.1f} molecules/s | latency mean "
              f"{d['inference_latency_mean']:.1f} ms p50 {d['inference_latency_p50']:.1f} "
              f"p90 {d['inference_latency_p90']:.1f} p95 {d['inference_latency_p95']:.1f} "
              f"p99 {d['inference_latency_p99']:.1f} ms")
PY
    done
done
