#!/usr/bin/env bash
# Inference throughput (molecules/ms) and latency percentiles at batch sizes 400, 800 and 1600, FP32 and AMP.
# Uses CKPT if set; otherwise writes a 1-epoch checkpoint of the architecture given by the extra flags.
#   bash scripts/se3_transformer/benchmark_inference.sh --num_layers 4 --num_channels 16 --num_degrees 3 --num_heads 4
set -euo pipefail
cd "$(dirname "$0")/../.."
SOURCE="${SOURCE:-qm9pack}"
NUM_MOLECULES="${NUM_MOLECULES:-10000}"  # enough molecules for full batches of 1600
STEPS="${STEPS:-5}"
WARMUP="${WARMUP:-2}"
BATCH_SIZES="${BATCH_SIZES:-400 800 1600}"
LOG_ROOT="${LOG_ROOT:-results/se3_transformer_benchmark/inference}"
if [[ -z "${CKPT:-}" ]]; then
    CKPT="$LOG_ROOT/benchmark_model.pt"
    python -m se3_transformer.train --source sample --num_molecules 100 --epochs 1 --eval_interval 0 --silent \
        --log_dir "$LOG_ROOT/make_ckpt" --save_ckpt_path "$CKPT" "$@"
fi
for bs in $BATCH_SIZES; do
    for amp in "" "--amp"; do
        name="bs${bs}${amp:+_amp}"
        echo "=== inference batch_size=$bs ${amp:-fp32}"
        python -m se3_transformer.inference --benchmark --source "$SOURCE" --num_molecules "$NUM_MOLECULES" --split train --load_ckpt_path "$CKPT" \
            --batch_size "$bs" --benchmark_warmup "$WARMUP" --benchmark_steps "$STEPS" --silent \
            --log_dir "$LOG_ROOT/$name" $amp
        grep -o '"data": {"inference_[^}]*}' "$LOG_ROOT/$name/log.json" | tail -2
    done
done
