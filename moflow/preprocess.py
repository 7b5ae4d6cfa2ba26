"""Preprocess SMILES into the MoFlow cache: ``python -m moflow.preprocess --dataset sample``.

Datasets: sample (embedded MOSES subset, the default), moses (molsets wheel), zinc250k
(``--download`` fetches it), qm9 (``--download`` or the qm9pack wheel). Molecules with atoms
outside the element list or too many atoms are refused and counted, never dropped silently.
"""
import argparse
import random
import sys

from moflow.config import DATASETS, DatasetSpec
from moflow.data.dataset import save_cache
from moflow.data.download import download_dataset
from moflow.data.encoding import format_skip_counts, encode_many
from moflow.data.sources import load_smiles


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="sample", choices=["sample", "moses", "zinc250k", "qm9"])
    p.add_argument("--data_dir", default="data/moflow", help="where the cache (and downloads) go")
    p.add_argument("--csv", default=None, help="read SMILES from this CSV instead of the default source")
    p.add_argument("--smiles_column", default=None, help="SMILES column name in --csv")
    p.add_argument("--download", action="store_true", help="download zinc250k/qm9 first")
    p.add_argument("--url", default=None, help="override the download URL")
    p.add_argument("--sha256", default=None, help="expected SHA-256 of the download")
    p.add_argument("--max_molecules", type=int, default=None,
                   help="random subset of this many input SMILES (seeded)")
    p.add_argument("--max_atoms", type=int, default=None, help="override the dataset's atom limit")
    p.add_argument("--max_nodes", type=int, default=None, help="override the padded node count")
    p.add_argument("--valid_fraction", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strict", action="store_true", help="fail if any molecule is refused")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    base = DATASETS["moses" if args.dataset == "sample" else args.dataset]
    max_atoms = args.max_atoms or base.max_atoms
    max_nodes = args.max_nodes or max(base.max_nodes, max_atoms)
    if max_nodes < max_atoms:
        raise ValueError(f"--max_nodes {max_nodes} < --max_atoms {max_atoms}")
    spec = DatasetSpec(args.dataset, base.atomic_nums, max_atoms, max_nodes)
    if not 0.0 < args.valid_fraction < 1.0:
        raise ValueError(f"--valid_fraction must be in (0, 1), got {args.valid_fraction}")

    if args.download:
        download_dataset(args.dataset, args.data_dir, url=args.url, sha256=args.sha256)
    smiles = load_smiles(args.dataset, args.data_dir, args.csv, args.smiles_column)
    if args.max_molecules and args.max_molecules < len(smiles):
        smiles = random.Random(args.seed).sample(smiles, args.max_molecules)
    kept, atoms, bonds, skipped, _ = encode_many(smiles, spec)
    n_skipped = sum(skipped.values())
    print(f"{args.dataset}: {len(smiles)} SMILES read, {len(kept)} encoded, {n_skipped} refused "
          f"({format_skip_counts(skipped)}); atoms {[a for a in spec.atomic_nums]}, "
          f"max_atoms {spec.max_atoms}, padded to {spec.max_nodes} nodes")
    if not kept:
        raise ValueError(f"no molecule of {args.dataset} could be encoded ({format_skip_counts(skipped)})")
    if args.strict and n_skipped:
        raise ValueError(f"--strict: {n_skipped} molecules refused ({format_skip_counts(skipped)})")
    npz, split = save_cache(args.data_dir, args.dataset, spec, kept, atoms, bonds,
                            args.valid_fraction, args.seed)
    print(f"wrote {npz} and {split}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
