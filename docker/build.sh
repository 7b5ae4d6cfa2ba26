#!/usr/bin/env bash
# Build the molrecipes GPU image from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
docker build -t "${IMAGE:-molrecipes:latest}" .
