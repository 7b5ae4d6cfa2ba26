#!/usr/bin/env bash
# Build OC20-format S2EF LMDBs (train.lmdb, val.lmdb) from ASE EMT relaxations of adsorbates on slabs.
#   OUT=data/graph_parallel/oc20_emt NUM_SYSTEMS=200 bash scripts/graph_parallel/make_dataset.sh [--slab_size 3 3 4]
set -euo pipefail
source "$(dirname "$0")/../env.sh"
python -m graph_parallel.make_dataset --out_dir "${OUT:-data/graph_parallel/oc20_emt}" \
    --num_systems "${NUM_SYSTEMS:-200}" --frames_per_system "${FRAMES:-8}" --seed "${SEED:-0}" "$@"
