#!/usr/bin/env bash
# Start a shell in the image with all GPUs, shared memory for DataLoader workers, and ./results mounted.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p results
docker run --gpus all --ipc=host --ulimit memlock=-1 --ulimit stack=67108864 -it --rm \
    -v "$PWD/results:/workspace/molrecipes/results" "${IMAGE:-molrecipes:latest}" "$@"
