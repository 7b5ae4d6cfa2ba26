#!/usr/bin/env bash
# Single-process training (CPU or one GPU) on the embedded EMT data, or DATA_DIR with train.lmdb/val.lmdb.
#   MODEL=gemnet_t PRESET=base bash scripts/graph_parallel/train.sh --epochs 20
set -euo pipefail
source "$(dirname "$0")/../env.sh"
DATA_ARGS=()
[ -n "${DATA_DIR:-}" ] && DATA_ARGS=(--data_dir "$DATA_DIR")
python -m graph_parallel.train --model "${MODEL:-dimenetpp}" --preset "${PRESET:-base}" "${DATA_ARGS[@]}" \
    --log_dir "${LOG_DIR:-results/graph_parallel/${MODEL:-dimenetpp}}" \
    --save_ckpt_path "${CKPT:-results/graph_parallel/${MODEL:-dimenetpp}/checkpoint.pt}" "$@"
