#!/usr/bin/env bash
# Dispatch to a recipe's training script: bash scripts/train.sh {moflow|se3_transformer|graph_parallel} [flags]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
model="${1:-}"
case "$model" in
    moflow|se3_transformer|graph_parallel) shift; exec bash "$here/$model/train.sh" "$@" ;;
    *) echo "usage: bash scripts/train.sh {moflow|se3_transformer|graph_parallel} [training flags]" >&2; exit 2 ;;
esac
