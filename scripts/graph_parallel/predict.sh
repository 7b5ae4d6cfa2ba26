#!/usr/bin/env bash
# Energies and forces of every structure of a split to an .npz file (see graph_parallel/predict.py).
#   CKPT=results/graph_parallel/dimenetpp/checkpoint.pt OUTPUT=predictions.npz bash scripts/graph_parallel/predict.sh [--split val]
set -euo pipefail
source "$(dirname "$0")/../env.sh"
NPROC="${NPROC:-1}"
torchrun --standalone --nproc_per_node "$NPROC" -m graph_parallel.predict --gp_size "${GP_SIZE:-1}" \
    --load_ckpt_path "${CKPT:?set CKPT to a graph_parallel checkpoint}" --output "${OUTPUT:-predictions.npz}" "$@"
