#!/usr/bin/env bash
# Build the MoFlow caches. Default: the embedded MOSES sample (offline).
#   bash scripts/moflow/data_preprocess.sh                 # sample
#   DATASET=moses MAX_MOLECULES=50000 bash scripts/moflow/data_preprocess.sh
#   DATASET=qm9 bash scripts/moflow/data_preprocess.sh     # qm9pack CSVs (offline)
#   DATASET=zinc250k bash scripts/moflow/data_preprocess.sh --download
set -euo pipefail
source "$(dirname "$0")/../env.sh"
DATA_DIR="${DATA_DIR:-data/moflow}"
DATASET="${DATASET:-sample}"
extra=()
[[ -n "${MAX_MOLECULES:-}" ]] && extra+=(--max_molecules "$MAX_MOLECULES")
python -m moflow.preprocess --dataset "$DATASET" --data_dir "$DATA_DIR" "${extra[@]}" "$@"
