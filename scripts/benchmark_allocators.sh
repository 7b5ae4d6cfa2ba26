#!/usr/bin/env bash
# The memory allocators (MOLRECIPES_ALLOCATOR, chosen in scripts/env.sh) on three training steps:
# SE(3) small (batch 32), DimeNet++ base with forces (batch 8), MoFlow qm9 (batch 128). Each
# bench_model.py runs ROUNDS times (default 3) per allocator, interleaved; prints medians and ratios
# to the system allocator (ALLOCATORS, default system,glibc,jemalloc,tcmalloc; JSON_DIR=DIR keeps them;
# WORKLOADS, default "se3 dimenetpp moflow", picks the steps).
#   bash scripts/benchmark_allocators.sh
set -euo pipefail
source "$(dirname "$0")/env.sh"
ALLOCATORS="${ALLOCATORS:-system,glibc,jemalloc,tcmalloc}"
run() {
    local name="$1"
    shift
    case " ${WORKLOADS:-se3 dimenetpp moflow} " in *" ${name%%_*} "*) ;; *) return 0 ;; esac
    echo "=== $name"
    python "$MOLRECIPES_ROOT/scripts/bench_harness.py" --allocators "$ALLOCATORS" --rounds "${ROUNDS:-3}" \
        ${JSON_DIR:+--json "$JSON_DIR/$name.json"} -- "$@"
}
run se3_small_train python "$MOLRECIPES_ROOT/scripts/se3_transformer/bench_model.py" --preset small --phase train \
    --batch_size 32 --steps 5
run dimenetpp_base_train python "$MOLRECIPES_ROOT/scripts/graph_parallel/bench_model.py" --model dimenetpp \
    --preset base --phase train --batch_size 8 --warmup 1 --steps 3
run moflow_qm9_train python "$MOLRECIPES_ROOT/scripts/moflow/bench_model.py" --preset qm9 --phase train \
    --batch_size 128 --steps 5
