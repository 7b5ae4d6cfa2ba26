#!/usr/bin/env bash
# Single-process training (CPU or one GPU) on the embedded EMT data, or on DATASET (a directory with
# train/val splits, or a name under --data_dir).
#   MODEL=gemnet_t PRESET=base DATASET=data/graph_parallel/oc20_emt bash scripts/graph_parallel/train.sh --epochs 20
set -euo pipefail
source "$(dirname "$0")/../env.sh"
MODEL="${MODEL:-dimenetpp}"
python -m graph_parallel.train --model "$MODEL" --preset "${PRESET:-base}" --dataset "${DATASET:-emt_small}" \
    --log_dir "${LOG_DIR:-results/graph_parallel/$MODEL}" \
    --save_ckpt_path "${CKPT:-results/graph_parallel/$MODEL/checkpoint.pt}" "$@"
