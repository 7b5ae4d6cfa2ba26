#!/usr/bin/env bash
# Data x graph parallel training under torchrun: NPROC processes, GP_SIZE of them split each graph.
#   NPROC=4 GP_SIZE=2 MODEL=dimenetpp PRESET=large DATASET=data/graph_parallel/oc20_emt bash scripts/graph_parallel/train_gp.sh --epochs 20
set -euo pipefail
source "$(dirname "$0")/../env.sh"
NPROC="${NPROC:-2}"
GP_SIZE="${GP_SIZE:-2}"
MODEL="${MODEL:-dimenetpp}"
torchrun --standalone --nproc_per_node "$NPROC" -m graph_parallel.train --gp_size "$GP_SIZE" \
    --model "$MODEL" --preset "${PRESET:-base}" --dataset "${DATASET:-emt_small}" \
    --log_dir "${LOG_DIR:-results/graph_parallel/${MODEL}_gp${GP_SIZE}}" \
    --save_ckpt_path "${CKPT:-results/graph_parallel/${MODEL}_gp${GP_SIZE}/checkpoint.pt}" "$@"
