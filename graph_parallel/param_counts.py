"""Print the parameter count of every model preset next to the paper's figure (Sriram et al., 2022).

    python -m graph_parallel.param_counts [--model gemnet_t] [--preset base]
"""
from __future__ import annotations

import sys
from typing import List, Optional

from runtime.cli import ArgumentParser
from runtime.errors import ConfigError, run_main

from graph_parallel.models import MODELS, build_model, count_parameters

# figures quoted by the paper / OC20 for the presets that have one
PAPER = {("dimenetpp", "base"): "1.8M (OC20 DimeNet++)", ("dimenetpp", "xl"): "~240M (DimeNet++-XL)",
         ("gemnet_dt", "base"): "~32M (OC20 GemNet-dT)", ("gemnet_t", "xl"): "~300M (GemNet-XL)",
         ("gemnet_dt", "xl"): "~300M (GemNet-XL)"}


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m graph_parallel.param_counts", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), action="append", default=None,
                        help="only this model (repeatable; default: all)")
    parser.add_argument("--preset", action="append", default=None, help="only this preset (repeatable; default: all)")
    return parser


def main(argv: Optional[List[str]] = None) -> List[tuple]:
    args = build_parser().parse_args(argv)
    known = {p for _, presets in MODELS.values() for p in presets}
    unknown = sorted(set(args.preset or ()) - known)
    if unknown:
        raise ConfigError(f"unknown preset(s) {unknown}; choose from {sorted(known)}")
    rows = []
    print(f"{'model':10s} {'preset':6s} {'parameters':>14s}  paper")
    for name, (_, presets) in MODELS.items():
        if args.model and name not in args.model:
            continue
        for preset in presets:
            if args.preset and preset not in args.preset:
                continue
            n = count_parameters(build_model(name, preset))
            rows.append((name, preset, n))
            print(f"{name:10s} {preset:6s} {n:14,d}  {PAPER.get((name, preset), '-')}", flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(run_main(main))
