"""Pick the reader for a dataset path: ``open_dataset(path)`` for every format this package reads.

=============================  ======================================================  ==================
path                           detected by                                             reader
=============================  ======================================================  ==================
``x.aselmdb`` / dir of them    the suffix                                              AseLmdbDataset
``x.lmdb`` / dir of them       LMDB magic; then ``"nextid"`` key or zlib-compressed    AseLmdbDataset
                               first value -> ASE-LMDB, otherwise pickled records      or LmdbDataset
``x.db``, ``x.json``           the suffix (SQLite / JSON ase.db)                       AseDbDataset
any other file                 LMDB magic, as ``.lmdb``; else refused                  -
=============================  ======================================================  ==================

In a directory, the first file (in name order) decides, and all files must have one suffix.
Every reader has ``len``, ``raw(i)`` (validated numpy record) and ``[i]`` (tensors).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import lmdb

from runtime.errors import DataError, MissingFileError

from graph_parallel.data.ase_db import AseDbDataset
from graph_parallel.data.ase_lmdb import AseLmdbDataset
from graph_parallel.data.lmdb_files import open_lmdb
from graph_parallel.data.oc20_lmdb import LmdbDataset
from graph_parallel.data.records import REBUILD_HINT

LMDB_SUFFIXES = (".lmdb", ".aselmdb")
ASE_DB_SUFFIXES = (".db", ".json")
SPLIT_CANDIDATES = ("{name}.lmdb", "{name}.aselmdb", "{name}.db", "{name}.json", "{name}")


def _lmdb_kind(file: Path) -> str:
    """'aselmdb' or 'lmdb' (pickled records) for an LMDB file, from its first entries."""
    env = open_lmdb(file)
    try:
        with env.begin() as txn:
            if txn.get(b"nextid") is not None:
                return "aselmdb"
            cursor = txn.cursor()
            for key, value in cursor:
                if key not in (b"length", b"metadata", b"deleted_ids"):
                    return "aselmdb" if value[:1] == b"\x78" else "lmdb"    # zlib header vs pickle
    except lmdb.Error as exc:
        raise DataError(f"{file}: damaged LMDB ({exc}); {REBUILD_HINT}") from exc
    return "lmdb"


def detect_format(path: Union[str, Path]) -> str:
    """'lmdb' (pickled S2EF records), 'aselmdb' (fairchem ASE-LMDB) or 'asedb' (ase .db/.json)."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"dataset not found: {path}")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in LMDB_SUFFIXES)
        if not files:
            raise MissingFileError(f"no *.lmdb or *.aselmdb files in directory {path}")
        suffixes = {p.suffix for p in files}
        if len(suffixes) > 1:
            raise DataError(f"{path}: mixes {sorted(suffixes)} files; keep one dataset format per directory")
        first = files[0]
        return "aselmdb" if first.suffix == ".aselmdb" else _lmdb_kind(first)
    if path.suffix == ".aselmdb":
        return "aselmdb"
    if path.suffix in ASE_DB_SUFFIXES:
        return "asedb"
    return _lmdb_kind(path)


def open_dataset(path: Union[str, Path]):
    """The dataset at ``path`` with the reader its format needs (see the module table)."""
    path = Path(path)
    kind = detect_format(path)
    if kind == "asedb":
        return AseDbDataset(path)
    if kind == "aselmdb":
        suffix = ".lmdb" if (path.suffix == ".lmdb" or (path.is_dir() and not any(path.glob("*.aselmdb")))) \
            else ".aselmdb"
        return AseLmdbDataset(path, suffixes=(suffix,))
    return LmdbDataset(path)


def find_split(data_dir: Union[str, Path], name: str, required: bool = False) -> Optional[Path]:
    """``DATA_DIR/NAME.lmdb``, ``.aselmdb``, ``.db``, ``.json`` or ``DATA_DIR/NAME/``, the first that exists.

    None if there is none, or a :class:`MissingFileError` listing what was tried when ``required``.
    """
    data_dir = Path(data_dir)
    tried = [data_dir / pattern.format(name=name) for pattern in SPLIT_CANDIDATES]
    for candidate in tried:
        if candidate.exists():
            return candidate
    if required:
        raise MissingFileError(f"no '{name}' split in {data_dir}: tried " + ", ".join(p.name for p in tried))
    return None
