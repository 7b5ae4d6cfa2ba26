# Sourced by every script. The repository is made importable from any directory without changing
# directory, so relative paths given to a script are taken from the caller's directory (as they are
# for `python -m ...` once `pip install -e .` has run). MOLRECIPES_ROOT is the repository root.
MOLRECIPES_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export MOLRECIPES_ROOT
export PYTHONPATH="$MOLRECIPES_ROOT${PYTHONPATH:+:$PYTHONPATH}"

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
