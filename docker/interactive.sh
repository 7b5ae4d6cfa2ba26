#!/usr/bin/env bash
# Start a shell in the image with all GPUs, shared memory for DataLoader workers, and the results
# and data directories mounted (created on the host if missing):
#   RESULTS=$PWD/results DATA=$PWD/data bash docker/interactive.sh
# Inside: /workspace/molrecipes/results and /workspace/molrecipes/data (the recipes' defaults use
# data/... and results/... relative to the working directory, /workspace/molrecipes).
set -euo pipefail
RESULTS="${RESULTS:-$PWD/results}"
DATA="${DATA:-$PWD/data}"
mkdir -p "$RESULTS" "$DATA"
docker run --gpus all --ipc=host --ulimit memlock=-1 --ulimit stack=67108864 -it --rm \
    -v "$RESULTS:/workspace/molrecipes/results" -v "$DATA:/workspace/molrecipes/data" \
    "${IMAGE:-molrecipes:latest}" "$@"
