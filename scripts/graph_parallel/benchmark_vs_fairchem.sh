#!/usr/bin/env bash
# This project's GemNet-T / GemNet-dT vs fairchem-core 1.x's GemNetT: same structures, edges, triplets,
# hyperparameters and weights, interleaved in one process; training steps with forces. Prints a table per
# model and batch size (ours / fairchem CPU time, ratio, peak memory) and a BENCH line; asserts nothing.
#   MODELS="gemnet_t gemnet_dt" BATCH_SIZES="2 8" ROUNDS=3 bash scripts/graph_parallel/benchmark_vs_fairchem.sh
# fairchem-core 1.x needs torch_scatter/torch_sparse (no wheels for this torch): it runs in its own venv
# (FAIRCHEM_VENV, default /tmp/fcvenv; made here with the system site packages, so it sees this torch) with
# pure-PyTorch stand-ins. FAIRCHEM_PYTHON=<python> uses that interpreter instead of the venv. If fairchem
# cannot be installed or imported, one `skip:` line and exit 0.
set -euo pipefail
# Two models in one process: their peak memory compares only under an allocator that returns freed memory.
export MOLRECIPES_ALLOCATOR="${MOLRECIPES_ALLOCATOR:-system}"
source "$(dirname "$0")/../env.sh"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
venv="${FAIRCHEM_VENV:-/tmp/fcvenv}"
py="${FAIRCHEM_PYTHON:-$venv/bin/python}"
if [ -z "${FAIRCHEM_PYTHON:-}" ] && [ ! -x "$py" ]; then
    { python -m venv --system-site-packages "$venv" \
        && "$venv/bin/pip" install --quiet --no-deps 'fairchem-core==1.10.0'; } >/dev/null 2>&1 || true
fi
if ! "$py" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('fairchem') is None)" 2>/dev/null; then
    echo "skip: fairchem-core<2 is not importable by $py (install: python -m venv --system-site-packages $venv && $venv/bin/pip install --no-deps fairchem-core==1.10.0)"
    exit 0
fi
for model in ${MODELS:-gemnet_t gemnet_dt}; do
    for bs in ${BATCH_SIZES:-2 8}; do
        echo "=== $model ${PRESET:-base}, batch $bs ==="
        "$py" "$(dirname "$0")/benchmark_vs_fairchem.py" --model "$model" --preset "${PRESET:-base}" \
            --batch_size "$bs" --rounds "${ROUNDS:-3}" --warmup "${WARMUP:-1}" "$@"
    done
done
