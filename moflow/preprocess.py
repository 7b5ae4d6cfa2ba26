"""Preprocess SMILES into the MoFlow cache: ``python -m moflow.preprocess --dataset sample``.

Datasets: sample (embedded MOSES subset, the default), moses (molsets wheel), zinc250k
(``--download`` fetches it, or ``--csv`` reads a local ``250k_rndm_zinc_drugs_clean_3.csv``), qm9
(``--download`` or the qm9pack wheel). Molecules with atoms outside the element list or too many
atoms are refused and counted, never dropped silently.

``--valid_idx FILE`` takes the held-out split from a file of source row numbers (MoFlow's
``valid_idx_zinc.json`` / ``valid_idx_qm9.json``, 1-based as the reference reads them; see
``--valid_idx_base``) instead of a seeded ``--valid_fraction``.
"""
import argparse
import random
import sys

from moflow.config import DATASETS, DatasetSpec
from moflow.data.dataset import save_cache
from moflow.data.download import download_dataset
from moflow.data.encoding import encode_many, format_skip_counts
from moflow.data.sources import load_table, read_valid_idx
from runtime.cli import ArgumentParser
from runtime.errors import ConfigError, DataError, run_main


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m moflow.preprocess", description=__doc__)
    p.add_argument("--dataset", default="sample", choices=["sample", "moses", "zinc250k", "qm9"])
    p.add_argument("--data_dir", default="data/moflow", help="where the cache (and downloads) go")
    p.add_argument("--csv", default=None,
                   help="read SMILES from this file instead of the default source: a CSV (e.g. "
                        "250k_rndm_zinc_drugs_clean_3.csv) or a .smi file, optionally .gz")
    p.add_argument("--smiles_column", default=None,
                   help="SMILES column name in --csv, matched case-insensitively (unset: smiles)")
    p.add_argument("--valid_idx", default=None,
                   help="JSON file of held-out source rows (e.g. MoFlow's valid_idx_zinc.json); "
                        "replaces --valid_fraction")
    p.add_argument("--valid_idx_base", type=int, default=1, choices=[0, 1],
                   help="numbering of --valid_idx rows: 1 as MoFlow/NVIDIA read the file, 0 as CGVAE/GraphAF")
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


def held_out_molecules(valid_rows, source_rows, num_rows: int, path: str):
    """Cache indices of the molecules whose source row is in ``valid_rows`` (0-based rows).

    ``source_rows[k]`` is the source row of cache molecule ``k``. Rows past the end of the source
    mean the index file belongs to another file.
    """
    if valid_rows and valid_rows[-1] >= num_rows:
        raise DataError(f"{path} lists row {valid_rows[-1]} (0-based) but the SMILES source has only "
                        f"{num_rows} rows: an index file of another dataset, or the wrong --valid_idx_base")
    held = set(valid_rows)
    return [k for k, row in enumerate(source_rows) if row in held]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    base = DATASETS["moses" if args.dataset == "sample" else args.dataset]
    max_atoms = args.max_atoms or base.max_atoms
    max_nodes = args.max_nodes or max(base.max_nodes, max_atoms)
    if max_nodes < max_atoms:
        raise ConfigError(f"--max_nodes {max_nodes} < --max_atoms {max_atoms}")
    spec = DatasetSpec(args.dataset, base.atomic_nums, max_atoms, max_nodes)
    if not 0.0 < args.valid_fraction < 1.0:
        raise ConfigError(f"--valid_fraction must be in (0, 1), got {args.valid_fraction}")
    if args.max_molecules is not None and args.max_molecules <= 0:
        raise ConfigError(f"--max_molecules must be positive, got {args.max_molecules}")
    valid_rows = None
    if args.valid_idx:  # read before the (long) SMILES source, so a bad file fails fast
        valid_rows = read_valid_idx(args.valid_idx, args.valid_idx_base, hint=(
            "give MoFlow's valid_idx_zinc.json (a JSON list of row numbers of "
            "250k_rndm_zinc_drugs_clean_3.csv) or leave --valid_idx out for a seeded split"))

    if args.download:
        download_dataset(args.dataset, args.data_dir, url=args.url, sha256=args.sha256)
    table = load_table(args.dataset, args.data_dir, args.csv, args.smiles_column)
    smiles, rows = table.smiles, table.rows
    if args.max_molecules and args.max_molecules < len(smiles):
        pick = sorted(random.Random(args.seed).sample(range(len(smiles)), args.max_molecules))
        smiles, rows = [smiles[i] for i in pick], [rows[i] for i in pick]
    kept, atoms, bonds, skipped, source_idx = encode_many(smiles, spec)
    if table.empty:
        skipped["empty_smiles"] += table.empty
    n_skipped = sum(skipped.values())
    print(f"{args.dataset}: {len(smiles) + table.empty} SMILES read, {len(kept)} encoded, {n_skipped} refused "
          f"({format_skip_counts(skipped)}); atoms {[a for a in spec.atomic_nums]}, "
          f"max_atoms {spec.max_atoms}, padded to {spec.max_nodes} nodes")
    if not kept:
        raise DataError(f"no molecule of {args.dataset} could be encoded ({format_skip_counts(skipped)})")
    if args.strict and n_skipped:
        raise DataError(f"--strict: {n_skipped} molecules refused ({format_skip_counts(skipped)})")
    valid_idx = None
    if valid_rows is not None:
        valid_idx = held_out_molecules(valid_rows, [rows[k] for k in source_idx], table.num_rows, args.valid_idx)
        print(f"held-out split from {args.valid_idx}: {len(valid_rows)} rows listed, {len(valid_idx)} of them "
              f"encoded here (the others were refused or not sampled); {len(kept) - len(valid_idx)} train")
        if not valid_idx:
            raise DataError(f"none of the {len(valid_rows)} rows of {args.valid_idx} is among the encoded "
                            f"molecules; wrong index file or --valid_idx_base?")
    npz, split = save_cache(args.data_dir, args.dataset, spec, kept, atoms, bonds,
                            args.valid_fraction, args.seed, valid_idx=valid_idx, valid_idx_file=args.valid_idx)
    print(f"wrote {npz} and {split}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
