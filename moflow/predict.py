"""Write generated molecules to a file: ``python -m moflow.predict --load_ckpt_path CKPT --output mols.smi``.

Every recipe has ``train``, ``evaluate`` and ``predict`` entry points; for a generative model,
predicting means sampling, so this is :mod:`moflow.generate` under the shared name (same flags).
"""
import sys

from moflow.generate import build_parser, main  # noqa: F401  (re-exported entry point)
from runtime.errors import run_main

if __name__ == "__main__":
    sys.exit(run_main(main))
