"""Where SMILES come from: downloaded CSVs, the molsets/qm9pack wheels, the embedded sample."""
import csv
import gzip
import importlib.util
import io
import os
from typing import List, Optional

SAMPLE_PATH = os.path.join(os.path.dirname(__file__), "moses_sample.csv.gz")


def _package_dir(package: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed; run `pip install --no-deps "
            f"{'molsets' if package == 'moses' else package}`")
    return list(spec.submodule_search_locations)[0]


def _open_text(path: str):
    if not os.path.exists(path):
        raise FileNotFoundError(f"SMILES file not found: {path}")
    if path.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def read_smiles_csv(path: str, column: Optional[str] = None) -> List[str]:
    """SMILES column of a CSV (column name matched case-insensitively; default 'smiles')."""
    csv.field_size_limit(1 << 30)
    with _open_text(path) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path} is empty")
        wanted = (column or "smiles").lower()
        lowered = [h.strip().lower() for h in header]
        if wanted not in lowered:
            raise ValueError(f"{path} has no column {wanted!r}; columns are {header}")
        col = lowered.index(wanted)
        return [row[col].strip() for row in reader if len(row) > col and row[col].strip()]


def moses_train_path() -> str:
    return os.path.join(_package_dir("moses"), "dataset", "data", "train.csv.gz")


def qm9pack_paths() -> List[str]:
    data = os.path.join(_package_dir("qm9pack"), "data")
    paths = sorted(os.path.join(data, f) for f in os.listdir(data)
                   if f.startswith("qm9_part") and f.endswith(".csv"))
    if not paths:
        raise FileNotFoundError(f"no qm9_part*.csv files in {data}")
    return paths


def load_smiles(dataset: str, data_dir: Optional[str] = None, csv_path: Optional[str] = None,
                column: Optional[str] = None) -> List[str]:
    """SMILES for ``dataset`` in {'sample', 'moses', 'zinc250k', 'qm9'}.

    ``csv_path`` overrides the default location. zinc250k reads ``data_dir/zinc250k.csv``
    (download it first); qm9 reads ``data_dir/qm9.csv`` if present, otherwise the qm9pack CSVs.
    """
    if csv_path:
        return read_smiles_csv(csv_path, column)
    if dataset == "sample":
        return read_smiles_csv(SAMPLE_PATH, "smiles")
    if dataset == "moses":
        return read_smiles_csv(moses_train_path(), "smiles")
    if dataset == "zinc250k":
        path = os.path.join(data_dir or ".", "zinc250k.csv")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found; run `python -m moflow.preprocess "
                                    f"--dataset zinc250k --download --data_dir {data_dir or '.'}`")
        return read_smiles_csv(path, column or "smiles")
    if dataset == "qm9":
        path = os.path.join(data_dir or ".", "qm9.csv")
        if os.path.exists(path):
            return read_smiles_csv(path, column or "smiles")
        smiles: List[str] = []
        for p in qm9pack_paths():
            smiles.extend(read_smiles_csv(p, "SMILES"))
        return smiles
    raise ValueError(f"unknown dataset {dataset!r}; choose sample, moses, zinc250k or qm9")
