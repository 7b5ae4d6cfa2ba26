#!/usr/bin/env bash
# Metrics of a checkpoint beside the baselines, on NPROC processes of which GP_SIZE split each graph.
#   CKPT=results/graph_parallel/dimenetpp/checkpoint.pt NPROC=2 GP_SIZE=2 bash scripts/graph_parallel/evaluate.sh [--split train]
set -euo pipefail
source "$(dirname "$0")/../env.sh"
NPROC="${NPROC:-1}"
torchrun --standalone --nproc_per_node "$NPROC" -m graph_parallel.evaluate --gp_size "${GP_SIZE:-1}" \
    --load_ckpt_path "${CKPT:?set CKPT to a graph_parallel checkpoint}" "$@"
