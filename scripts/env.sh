# Sourced by every script. The repository is made importable from any directory without changing
# directory, so relative paths given to a script are taken from the caller's directory (as they are
# for `python -m ...` once `pip install -e .` has run). MOLRECIPES_ROOT is the repository root.
MOLRECIPES_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export MOLRECIPES_ROOT
export PYTHONPATH="$MOLRECIPES_ROOT${PYTHONPATH:+:$PYTHONPATH}"

# The memory allocator of every process a script starts (figures: README, Performance): MOLRECIPES_ALLOCATOR=
#   tcmalloc (default) | jemalloc (preloaded with LD_PRELOAD: Debian's libtcmalloc-minimal4 / libjemalloc2)
#   glibc   glibc's malloc, tuned: no mmap per large tensor, no trimming (MALLOC_MMAP_MAX_, MALLOC_TRIM_THRESHOLD_)
#   system  the environment as given
# A preload library found in none of MOLRECIPES_LIB_PATH (colon-separated; default: the usual library
# directories) leaves the system allocator, silently. MOLRECIPES_ALLOCATOR_USED says what was chosen.
find_preload_library() {
    local dir name
    local IFS=:
    for dir in ${MOLRECIPES_LIB_PATH:-/usr/lib/x86_64-linux-gnu:/usr/lib/aarch64-linux-gnu:/usr/lib64:/usr/lib:/usr/local/lib${CONDA_PREFIX:+:$CONDA_PREFIX/lib}}; do
        for name in "$@"; do
            if [ -f "$dir/$name" ]; then echo "$dir/$name"; return 0; fi
        done
    done
    return 1
}

use_allocator() {
    local lib="" kept="" entry
    local IFS=:
    # Sourced again (a script started by a script) with another choice: undo what the last choice set.
    if [ -n "${MOLRECIPES_ALLOCATOR_PRELOAD:-}" ]; then
        for entry in ${LD_PRELOAD:-}; do
            [ "$entry" = "$MOLRECIPES_ALLOCATOR_PRELOAD" ] || kept="${kept:+$kept:}$entry"
        done
        if [ -n "$kept" ]; then export LD_PRELOAD="$kept"; else unset LD_PRELOAD; fi
    fi
    [ "${MOLRECIPES_ALLOCATOR_USED:-}" = glibc ] && unset MALLOC_MMAP_MAX_ MALLOC_TRIM_THRESHOLD_
    [ "${MOLRECIPES_ALLOCATOR_USED:-}" = tcmalloc ] && unset TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD
    unset IFS
    MOLRECIPES_ALLOCATOR_USED=system MOLRECIPES_ALLOCATOR_PRELOAD=""
    case "${MOLRECIPES_ALLOCATOR:-tcmalloc}" in
        jemalloc) lib="$(find_preload_library libjemalloc.so.2 libjemalloc.so)" || lib="" ;;
        tcmalloc) lib="$(find_preload_library libtcmalloc_minimal.so.4 libtcmalloc.so.4 libtcmalloc_minimal.so)" || lib=""
                  # no "tcmalloc: large alloc" line on stderr for every tensor above 1 GiB
                  [ -n "$lib" ] && export TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD=1099511627776 ;;
        glibc) export MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736; MOLRECIPES_ALLOCATOR_USED=glibc ;;
        system) ;;
        *) echo "error: MOLRECIPES_ALLOCATOR=${MOLRECIPES_ALLOCATOR} is not one of jemalloc, tcmalloc, glibc, system" >&2
           return 2 ;;
    esac
    if [ -n "$lib" ]; then
        export LD_PRELOAD="$lib${LD_PRELOAD:+:$LD_PRELOAD}"
        MOLRECIPES_ALLOCATOR_USED="${MOLRECIPES_ALLOCATOR:-tcmalloc}" MOLRECIPES_ALLOCATOR_PRELOAD="$lib"
    fi
    export MOLRECIPES_ALLOCATOR_USED MOLRECIPES_ALLOCATOR_PRELOAD
}
use_allocator || exit 2

# OpenMP workers that finish a parallel region first sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE),
# unless OMP_WAIT_POLICY is given (ACTIVE: spin, the OpenMP default). On shared cores a spinning worker
# takes the CPU that the other jobs and the descheduled worker need: MoFlow with two threads beside a
# matmul load, 1.6x the throughput, and no 10-20x collapse beside two; within noise on a quiet machine
# (README, "Thread waiting").
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

# Benchmark scripts: take `--baseline REV` / `--baseline=REV` (or BASELINE=REV) out of the arguments.
# Sets BASELINE (empty: no comparison) and ARGS (the other arguments, in order).
take_baseline() {
    BASELINE="${BASELINE:-}"
    ARGS=()
    while [ $# -gt 0 ]; do
        case "$1" in
            --baseline) BASELINE="$2"; shift 2 ;;
            --baseline=*) BASELINE="${1#--baseline=}"; shift ;;
            *) ARGS+=("$1"); shift ;;
        esac
    done
}

# Run a model-level benchmark command against revision $BASELINE and the working tree, interleaved
# (python -m runtime.compare): `compare_baseline DEFAULT_ROUNDS COMMAND...`; ROUNDS overrides the
# round count and COMPARE_JSON=FILE keeps the runs and medians.
compare_baseline() {
    local rounds="$1"
    shift
    python -m runtime.compare --baseline "$BASELINE" --rounds "${ROUNDS:-$rounds}" \
        ${COMPARE_JSON:+--json "$COMPARE_JSON"} -- "$@"
}
