#!/usr/bin/env bash
# The README's main job: a short CPU-sized run of every recipe on offline data (MoFlow: QM9 from the qm9pack
# wheel; SE(3): the embedded QM9 sample; graph_parallel: an EMT set it generates first, ~20 s).
# Each model's quickstart trains briefly, evaluates against trivial baselines, predicts with the
# checkpoint it wrote and draws its learning curves (curves.png). Outputs go under OUT_ROOT
# (default results/quickstart, relative to the current directory).
set -euo pipefail
source "$(dirname "$0")/env.sh"
export OUT_ROOT="${OUT_ROOT:-results/quickstart}"
for model in moflow se3_transformer graph_parallel; do
    echo "=== ${model} ==="
    bash "$MOLRECIPES_ROOT/scripts/${model}/quickstart.sh"
done
echo "quickstart finished; logs, checkpoints and curves.png under ${OUT_ROOT}/<recipe>"
