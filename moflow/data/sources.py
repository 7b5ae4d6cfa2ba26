"""Where SMILES come from: downloaded CSVs, local files, the molsets/qm9pack wheels, the embedded sample.

Readers only read: they never create a directory or a file. Every input that is missing raises one
``MissingFileError`` and every input that is damaged or in the wrong format raises one ``DataError``;
both messages name the file, say what is wrong and how to get a good copy (the ``hint``).

=================================  ==============================================================
file                               format
=================================  ==============================================================
``.csv``, ``.csv.gz``              header row, a SMILES column (``smiles`` unless told otherwise);
                                   quoted fields may hold newlines (ZINC250k's
                                   ``250k_rndm_zinc_drugs_clean_3.csv`` ends every SMILES with one)
``.smi``, ``.smi.gz``, ``.txt``    one SMILES per line, optionally followed by whitespace and a
                                   name; an optional first line ``smiles``/``SMILES`` is a header
valid_idx ``.json``                MoFlow's held-out split: a JSON list of row numbers
                                   (``valid_idx_zinc.json``), or ``{"valid_idxs": [...]}`` with
                                   numbers as strings (``valid_idx_qm9.json``); 1-based by default
=================================  ==============================================================
"""
import csv
import gzip
import importlib.util
import io
import json
import os
import zlib
from dataclasses import dataclass
from typing import List, Optional

from runtime.errors import DataError, MissingFileError

SAMPLE_PATH = os.path.join(os.path.dirname(__file__), "moses_sample.csv.gz")
_LINE_FORMATS = (".smi", ".smi.gz", ".txt", ".txt.gz")


@dataclass
class SmilesTable:
    """SMILES read from a file and the 0-based data row each one came from.

    Rows with an empty SMILES field keep their row number but are left out and counted in ``empty``.
    """
    smiles: List[str]
    rows: List[int]
    num_rows: int
    empty: int = 0


def _package_dir(package: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingFileError(
            f"package {package!r} is not installed; run `pip install --no-deps "
            f"{'molsets' if package == 'moses' else package}`")
    return list(spec.submodule_search_locations)[0]


def _open_text(path: str):
    if path.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _read(path: str, parse, hint: str):
    """Run ``parse(text_stream)`` on ``path``; every read or format failure becomes one DataError."""
    fix = f"; {hint}" if hint else ""
    if not os.path.exists(path):
        raise MissingFileError(f"SMILES file not found: {path}{fix}")
    if os.path.isdir(path):
        raise DataError(f"{path} is a directory, expected a SMILES file{fix}")
    try:
        with _open_text(path) as f:
            return parse(f)
    except gzip.BadGzipFile as err:
        raise DataError(f"{path} is not gzip-compressed although its name ends in .gz ({err}){fix}") from err
    except (EOFError, zlib.error) as err:
        raise DataError(f"{path} is truncated or corrupt: the compressed stream is damaged ({err}){fix}") from err
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text (a binary or wrong file?): {err}{fix}") from err
    except csv.Error as err:
        raise DataError(f"{path} is not a readable CSV file: {err}{fix}") from err
    except DataError as err:
        raise DataError(f"{err}{fix}") from err
    except OSError as err:
        raise DataError(f"{path} cannot be read: {err}{fix}") from err


def _parse_csv(path: str, column: Optional[str]):
    wanted = (column or "smiles").lower()

    def parse(f) -> SmilesTable:
        reader = csv.reader(f, strict=True)  # an unterminated quote (a truncated file) is an error
        header = next(reader, None)
        while header == []:  # blank lines before the header
            header = next(reader, None)
        if header is None:
            raise DataError(f"{path} is empty (no header line)")
        lowered = [h.strip().lower() for h in header]
        if wanted not in lowered:
            raise DataError(f"{path} has no column {wanted!r}; columns are {header}")
        col = lowered.index(wanted)
        table = SmilesTable([], [], 0)
        for row in reader:
            if not row:  # blank line: not a record (as pandas.read_csv)
                continue
            k = table.num_rows
            table.num_rows += 1
            value = row[col].strip() if len(row) > col else ""
            if value:
                table.smiles.append(value)
                table.rows.append(k)
            else:
                table.empty += 1
        return table
    return parse


def _parse_lines(path: str):
    def parse(f) -> SmilesTable:
        table = SmilesTable([], [], 0)
        first = True
        for line in f:
            if "\x00" in line:
                raise DataError(f"{path} contains NUL bytes: not a SMILES text file")
            fields = line.split()
            if not fields:
                continue
            if first and fields[0].lower() == "smiles":
                first = False
                continue
            first = False
            table.smiles.append(fields[0])
            table.rows.append(table.num_rows)
            table.num_rows += 1
        return table
    return parse


def read_smiles_table(path: str, column: Optional[str] = None, hint: str = "") -> SmilesTable:
    """SMILES of a CSV (column matched case-insensitively, default 'smiles') or of a .smi file.

    Fails with one ``DataError`` naming ``path`` when the file is empty, not gzip although named
    ``.gz``, truncated, binary, missing the column or without any SMILES; ``hint`` says how to get
    a good copy.
    """
    path = os.fspath(path)
    is_lines = path.lower().endswith(_LINE_FORMATS)
    table = _read(path, _parse_lines(path) if is_lines else _parse_csv(path, column), hint)
    if not table.smiles:
        what = "no SMILES line" if is_lines else f"a header but no SMILES in column {(column or 'smiles')!r}"
        raise DataError(f"{path} has {what}" + (f"; {hint}" if hint else ""))
    return table


def read_smiles_csv(path: str, column: Optional[str] = None, hint: str = "") -> List[str]:
    """SMILES column of a CSV (or the SMILES of a .smi file); see :func:`read_smiles_table`."""
    return read_smiles_table(path, column, hint).smiles


def read_valid_idx(path: str, base: int = 1, hint: str = "") -> List[int]:
    """0-based row indices of MoFlow's held-out split file (sorted, unique).

    The reference implementations (calvin-zcx/moflow ``get_val_ids``, NVIDIA's MoFlow
    ``transform.get_val_ids``) read ``valid_idx_zinc.json`` as a plain list and
    ``valid_idx_qm9.json`` as ``{"valid_idxs": ["007278", ...]}``, and subtract 1 from every entry;
    ``base=1`` does the same. Earlier users of the same ZINC file (CGVAE, GraphAF) treat the
    numbers as 0-based: pass ``base=0`` for that convention.
    """
    path = os.fspath(path)
    fix = f"; {hint}" if hint else ""
    expected = 'a JSON list of row numbers, or {"valid_idxs": [...]}'
    if base not in (0, 1):
        raise ValueError(f"base must be 0 or 1, got {base}")
    if not os.path.exists(path):
        raise MissingFileError(f"validation index file not found: {path}{fix}")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise DataError(f"{path} cannot be read: {err}{fix}") from err
    if not raw.strip():
        raise DataError(f"{path} is empty; expected {expected}{fix}")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path} is not valid JSON (truncated or not a JSON file?): {err}{fix}") from err
    if isinstance(data, dict):
        if "valid_idxs" not in data:
            raise DataError(f"{path} is a JSON object without 'valid_idxs' (keys: {sorted(data)[:5]}); "
                            f"expected {expected}{fix}")
        data = data["valid_idxs"]
    if not isinstance(data, list) or not data:
        raise DataError(f"{path} holds {type(data).__name__} {str(data)[:40]!r}; expected {expected}{fix}")
    indices = []
    for v in data:
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            raise DataError(f"{path}: entry {v!r} is not a row number; expected {expected}{fix}")
        try:
            indices.append(int(v) - base)
        except ValueError as err:
            raise DataError(f"{path}: entry {v!r} is not a row number; expected {expected}{fix}") from err
    if min(indices) < 0:
        raise DataError(f"{path} has row number {min(indices) + base}, below the first row with "
                        f"{base}-based numbering; pass --valid_idx_base 0 if the file counts from 0{fix}")
    if len(set(indices)) != len(indices):
        raise DataError(f"{path} lists {len(indices) - len(set(indices))} row numbers twice; "
                        f"the file is damaged{fix}")
    return sorted(indices)


def moses_train_path() -> str:
    return os.path.join(_package_dir("moses"), "dataset", "data", "train.csv.gz")


def qm9pack_paths() -> List[str]:
    data = os.path.join(_package_dir("qm9pack"), "data")
    paths = sorted(os.path.join(data, f) for f in os.listdir(data)
                   if f.startswith("qm9_part") and f.endswith(".csv"))
    if not paths:
        raise MissingFileError(f"no qm9_part*.csv files in {data}; run "
                               f"`pip install --force-reinstall --no-deps qm9pack`")
    return paths


def load_table(dataset: str, data_dir: Optional[str] = None, csv_path: Optional[str] = None,
               column: Optional[str] = None) -> SmilesTable:
    """SMILES of ``dataset`` with their source rows (see :func:`load_smiles`)."""
    where = data_dir or "."
    if csv_path:
        return read_smiles_table(csv_path, column,
                                 hint="pass a CSV with a header and a SMILES column (--smiles_column) "
                                      "or a .smi file, optionally gzip-compressed")
    if dataset == "sample":
        return read_smiles_table(SAMPLE_PATH, "smiles",
                                 hint="the embedded sample is damaged; restore moflow/data/moses_sample.csv.gz "
                                      "from the repository (`git checkout -- moflow/data/moses_sample.csv.gz`)")
    if dataset == "moses":
        return read_smiles_table(moses_train_path(), "smiles",
                                 hint="reinstall the wheel: `pip install --force-reinstall --no-deps molsets`")
    if dataset == "zinc250k":
        path = os.path.join(where, "zinc250k.csv")
        return read_smiles_table(path, column or "smiles", hint=(
            f"run `python -m moflow.preprocess --dataset zinc250k --download --data_dir {where}` to fetch it "
            f"(again), or pass a local copy with --csv 250k_rndm_zinc_drugs_clean_3.csv"))
    if dataset == "qm9":
        path = os.path.join(where, "qm9.csv")
        if os.path.exists(path):
            return read_smiles_table(path, column or "smiles", hint=(
                f"run `python -m moflow.preprocess --dataset qm9 --download --data_dir {where}` to fetch it "
                f"again, or delete it to use the qm9pack wheel"))
        table = SmilesTable([], [], 0)
        for p in qm9pack_paths():
            part = read_smiles_table(p, "SMILES", hint="reinstall the wheel: "
                                                       "`pip install --force-reinstall --no-deps qm9pack`")
            table.smiles += part.smiles
            table.rows += [table.num_rows + r for r in part.rows]
            table.num_rows += part.num_rows
            table.empty += part.empty
        return table
    raise ValueError(f"unknown dataset {dataset!r}; choose sample, moses, zinc250k or qm9")


def load_smiles(dataset: str, data_dir: Optional[str] = None, csv_path: Optional[str] = None,
                column: Optional[str] = None) -> List[str]:
    """SMILES for ``dataset`` in {'sample', 'moses', 'zinc250k', 'qm9'}.

    ``csv_path`` (a CSV or .smi file, optionally gzipped) overrides the default location. zinc250k
    reads ``data_dir/zinc250k.csv`` (download it first, or pass the local
    ``250k_rndm_zinc_drugs_clean_3.csv`` as ``csv_path``); qm9 reads ``data_dir/qm9.csv`` if
    present, otherwise the qm9pack CSVs.
    """
    return load_table(dataset, data_dir, csv_path, column).smiles
