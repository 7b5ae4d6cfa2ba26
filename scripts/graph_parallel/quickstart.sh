#!/usr/bin/env bash
# graph_parallel quick start on 2 CPU processes that split every graph (--gp_size 2), about 2 minutes:
#   1. generate an EMT slab+adsorbate set, 100 relaxations x 10 frames (~20 s; kept in DATA for later runs),
#   2. train a small DimeNet++ for one epoch (200 steps of 4 structures),
#   3. evaluate the checkpoint on the validation split beside the baselines (training mean energy,
#      per-element linear reference, zero forces), 4. write its predictions, 5. plot curves.png.
#   bash scripts/graph_parallel/quickstart.sh [extra training flags]      (OUT=..., DATA=... to relocate)
# Relative paths are taken from the caller's directory.
set -euo pipefail
source "$(dirname "$0")/../env.sh"
OUT="${OUT:-${OUT_ROOT:-results/quickstart}/graph_parallel}"
DATA="${DATA:-data/graph_parallel/emt100}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
RUN=(torchrun --standalone --nproc_per_node 2)
if [ ! -e "$DATA/train.lmdb" ] || [ ! -e "$DATA/val.lmdb" ]; then
    python -m graph_parallel.make_dataset --out_dir "$DATA" --num_systems 100 --frames_per_system 10 --seed 0
fi
"${RUN[@]}" -m graph_parallel.train --gp_size 2 --dataset "$DATA" --model "${MODEL:-dimenetpp}" --preset small \
    --cutoff 4.5 --max_neighbors 20 --epochs 1 --batch_size 4 --learning_rate 5e-3 --warmup_steps 20 \
    --log_interval 20 --log_dir "$OUT" --save_ckpt_path "$OUT/checkpoint.pt" "$@"
"${RUN[@]}" -m graph_parallel.evaluate --gp_size 2 --load_ckpt_path "$OUT/checkpoint.pt" --dataset "$DATA" \
    --split val --log_dir "$OUT"
"${RUN[@]}" -m graph_parallel.predict --gp_size 2 --load_ckpt_path "$OUT/checkpoint.pt" --dataset "$DATA" \
    --split val --output "$OUT/predictions_val.npz" --log_dir "$OUT"
python -m runtime.plot "$OUT"
echo "checkpoint: $OUT/checkpoint.pt  predictions: $OUT/predictions_val.npz  curves: $OUT/curves.png"
