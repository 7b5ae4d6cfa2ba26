#!/usr/bin/env bash
# Build the molrecipes GPU image from the repository root (the build context is the repository).
#   bash docker/build.sh                                           # python:3.12-slim + PyPI torch
#   BASE_IMAGE=nvcr.io/nvidia/pytorch:25.01-py3 bash docker/build.sh   # NGC base, keeps its torch
set -euo pipefail
cd "$(dirname "$0")/.."
args=()
if [[ -n "${BASE_IMAGE:-}" ]]; then
    args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
    [[ "$BASE_IMAGE" == nvcr.io/nvidia/pytorch* ]] && args+=(--build-arg INSTALL_TORCH=0)
fi
docker build "${args[@]}" -t "${IMAGE:-molrecipes:latest}" .
