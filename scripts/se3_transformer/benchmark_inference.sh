#!/usr/bin/env bash
# Inference throughput (molecules/s) and latency percentiles (ms) at batch sizes 400, 800 and 1600, FP32 and AMP.
# Uses CKPT if set; otherwise writes a 1-epoch checkpoint of the architecture given by the extra flags.
#   bash scripts/se3_transformer/benchmark_inference.sh --preset small
set -euo pipefail
cd "$(dirname "$0")/../.."
DATASET="${DATASET:-qm9pack}"
NUM_MOLECULES="${NUM_MOLECULES:-10000}"  # enough molecules for full batches of 1600
STEPS="${STEPS:-5}"
WARMUP="${WARMUP:-2}"
BATCH_SIZES="${BATCH_SIZES:-400 800 1600}"
LOG_ROOT="${LOG_ROOT:-results/se3_transformer_benchmark/inference}"
if [[ -z "${CKPT:-}" ]]; then
    CKPT="$LOG_ROOT/benchmark_model.pt"
    python -m se3_transformer.train --dataset sample --num_molecules 100 --epochs 1 --silent true \
        --log_dir "$LOG_ROOT/make_ckpt" --save_ckpt_path "$CKPT" "$@"
fi
for bs in $BATCH_SIZES; do
    for amp in false true; do
        name="bs${bs}_amp_${amp}"
        echo "=== inference batch_size=$bs amp=$amp"
        python -m se3_transformer.evaluate --benchmark true --dataset "$DATASET" --num_molecules "$NUM_MOLECULES" \
            --split train --load_ckpt_path "$CKPT" --batch_size "$bs" --benchmark_warmup "$WARMUP" \
            --benchmark_steps "$STEPS" --silent true --log_dir "$LOG_ROOT/$name" --amp "$amp"
        grep -o '"data": {"inference_[^}]*}' "$LOG_ROOT/$name/log.json" | tail -1
        grep -o '"data": {"peak_memory_mb[^}]*}' "$LOG_ROOT/$name/log.json" | tail -1
    done
done
