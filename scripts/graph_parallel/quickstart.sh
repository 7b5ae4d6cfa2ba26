#!/usr/bin/env bash
# A short gp_size=2 CPU training run on the embedded EMT data (2 processes, small DimeNet++, ~1-2 min),
# then evaluation of the saved checkpoint on the validation frames.
set -euo pipefail
source "$(dirname "$0")/../env.sh"
OUT="${OUT:-${OUT_ROOT:-results/quickstart}/graph_parallel}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
torchrun --standalone --nproc_per_node 2 -m graph_parallel.train --model "${MODEL:-dimenetpp}" --preset small \
    --gp_size 2 --epochs 3 --batch_size 4 --warmup_steps 20 --learning_rate 1e-3 \
    --log_dir "$OUT" --save_ckpt_path "$OUT/checkpoint.pt" "$@"
torchrun --standalone --nproc_per_node 2 -m graph_parallel.train --model "${MODEL:-dimenetpp}" --preset small \
    --gp_size 2 --evaluate --load_ckpt_path "$OUT/checkpoint.pt" --log_dir "$OUT/eval"
