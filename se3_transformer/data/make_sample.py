"""Regenerate the embedded sample: ``python -m se3_transformer.data.make_sample [--num_molecules 1000]``.

A seeded random subset of QM9 from the qm9pack wheel, bonds from RDKit, written in qm9_edge layout.
"""
import argparse

from se3_transformer.data.dgl_format import write_qm9_edge
from se3_transformer.data.qm9 import SAMPLE_PATH, subset_ids
from se3_transformer.data.qm9pack_source import NUM_MOLECULES, read_qm9pack


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num_molecules", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(SAMPLE_PATH))
    args = parser.parse_args(argv)
    arrays = read_qm9pack(subset_ids(NUM_MOLECULES, args.num_molecules, args.seed))
    write_qm9_edge(args.output, arrays)
    print(f"wrote {len(arrays)} molecules to {args.output}")


if __name__ == "__main__":
    main()
