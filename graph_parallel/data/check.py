"""python -m graph_parallel.data.check PATH [PATH ...]: read and validate every frame of datasets.

Prints one summary line per dataset (format, files, frames, atoms per frame, elements). A damaged,
truncated, refused or non-finite record ends the run with one ``error: ...`` line naming the
file, the key and the frame (exit code 2), never with a crash or a signal.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

import numpy as np

from runtime.errors import run_main

from graph_parallel.data.formats import detect_format, open_dataset


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m graph_parallel.data.check", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", help="dataset files or directories (.lmdb, .aselmdb, .db, .json)")
    parser.add_argument("--limit", type=int, default=None, help="check only the first N frames of each dataset")
    return parser


def check(path, limit: Optional[int] = None) -> str:
    """Validate the frames of one dataset; return its summary line."""
    kind = detect_format(path)
    dataset = open_dataset(path)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    natoms, elements = [], set()
    for index in range(count):
        frame = dataset.raw(index)
        natoms.append(frame["natoms"])
        elements.update(np.unique(frame["atomic_numbers"]).tolist())
    files = len(getattr(dataset, "files", [path]))
    atoms = f"{min(natoms)}-{max(natoms)} atoms" if natoms else "no frames"
    return (f"{path}: {kind}, {files} file(s), {len(dataset)} frames ({count} checked), {atoms}, "
            f"elements {sorted(elements)}: OK")


def main(argv: Optional[List[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    for path in args.paths:
        print(check(path, args.limit), flush=True)


if __name__ == "__main__":
    sys.exit(run_main(main))
