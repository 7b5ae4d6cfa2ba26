#!/usr/bin/env bash
# The README's main job: a short CPU-sized run of every recipe on its embedded default data.
# Each model's quickstart trains briefly and then generates / predicts with the checkpoint it wrote.
set -euo pipefail
cd "$(dirname "$0")/.."
export OUT_ROOT="${OUT_ROOT:-results/quickstart}"
for model in moflow se3_transformer graph_parallel; do
    echo "=== ${model} ==="
    bash "scripts/${model}/quickstart.sh"
done
echo "quickstart finished; logs and checkpoints under ${OUT_ROOT}"
