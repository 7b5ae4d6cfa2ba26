#!/usr/bin/env bash
# One command that checks a GPU node: CUDA-only tests, then every recipe's training and inference
# benchmark at a short setting (FP32, AMP, CUDA graphs, --compile; graph_parallel on NCCL), one table.
#   bash scripts/gpu_check.sh                      # on a GPU node: results/gpu_check/summary.md
#   bash scripts/gpu_check.sh --dry_run --out /tmp/gc   # CPU plumbing check (used by the tests)
set -euo pipefail
source "$(dirname "$0")/env.sh"
python "$MOLRECIPES_ROOT/scripts/gpu_check.py" "$@"
