# Sourced by every script. The repository is made importable from any directory without changing
# directory, so relative paths given to a script are taken from the caller's directory (as they are
# for `python -m ...` once `pip install -e .` has run). MOLRECIPES_ROOT is the repository root.
MOLRECIPES_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export MOLRECIPES_ROOT
export PYTHONPATH="$MOLRECIPES_ROOT${PYTHONPATH:+:$PYTHONPATH}"
