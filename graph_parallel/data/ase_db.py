"""Read S2EF frames from an ASE database (``ase.db``: SQLite ``.db`` or ``.json`` files).

Read-only by construction: SQLite files are opened with ``mode=ro`` (ase's own connection would
create a missing file, and add its tables to any SQLite file that lacks them), no ``.lock`` file
is used, and a missing path is a :class:`MissingFileError` before anything is touched. A file
that is not an ASE database, or is damaged, is a :class:`DataError` naming it. fairchem's
``*.aselmdb`` files are read by :class:`.ase_lmdb.AseLmdbDataset`, without ase-db-backends.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Dict, Optional, Union
from urllib.parse import quote

import numpy as np
import torch
from torch.utils.data import Dataset

from runtime.errors import DataError, MissingFileError

from graph_parallel.data.records import frame_to_tensors, validate_frame

SQLITE_MAGIC = b"SQLite format 3\x00"
# ase is imported where it is used: importing ase.constraints costs ~1 s, once per process of every run.


def _db_errors():
    from ase.io.formats import UnknownFileTypeError

    return (UnknownFileTypeError, sqlite3.Error, OSError, ValueError, KeyError, TypeError, AttributeError, IndexError,
            AssertionError)


def frame_from_atoms(atoms, energy: float, forces, sid: int = 0, fid: int = 0, where: Optional[str] = None) -> Dict:
    """An S2EF record from an ``ase.Atoms``: tags from ``atoms.get_tags()``, fixed from FixAtoms."""
    from ase.constraints import FixAtoms

    fixed = np.zeros(len(atoms), dtype=np.int64)
    for constraint in atoms.constraints:
        if isinstance(constraint, FixAtoms):
            fixed[constraint.get_indices()] = 1
    return validate_frame({
        "pos": atoms.get_positions(), "cell": np.asarray(atoms.get_cell()),
        "atomic_numbers": atoms.get_atomic_numbers(), "natoms": len(atoms), "tags": atoms.get_tags(),
        "fixed": fixed, "energy": energy, "forces": forces, "sid": sid, "fid": fid,
    }, where=where or f"atoms sid={sid} fid={fid}")


def _read_only_sqlite(filename: str):
    """ase's SQLite backend on a read-only connection: any attempted write fails instead of happening."""
    from ase.db.sqlite import SQLite3Database

    class ReadOnlySQLite3Database(SQLite3Database):
        def _connect(self):
            return sqlite3.connect(f"file:{quote(str(self.filename))}?mode=ro", uri=True, timeout=20)

    return ReadOnlySQLite3Database(filename, create_indices=False, use_lock_file=False)


def _open_database(path: Path):
    if path.suffix == ".db":
        with open(path, "rb") as fh:
            head = fh.read(len(SQLITE_MAGIC))
        if head != SQLITE_MAGIC:
            raise DataError(f"{path}: not an SQLite file ({path.stat().st_size} bytes, no SQLite header); "
                            "an ASE .db database is an SQLite file written by ase.db")
        return _read_only_sqlite(str(path.resolve()))
    if path.suffix == ".json":
        from ase.db.jsondb import JSONDatabase

        return JSONDatabase(str(path.resolve()), use_lock_file=False)
    raise DataError(f"{path}: unknown ASE database type '{path.suffix}' (read here: .db, .json; "
                    "fairchem's .aselmdb via open_dataset / AseLmdbDataset)")


class AseDbDataset(Dataset):
    """Rows of an ASE database that carry energy and forces, as S2EF frames.

    ``sid`` is the row's ``sid`` key-value pair if present, else its id; ``fid`` likewise (else 0).
    """

    def __init__(self, path: Union[str, Path], select: Optional[str] = None):
        self.path = Path(path)
        if not self.path.exists():
            raise MissingFileError(f"ASE database not found: {self.path}")
        if not self.path.is_file():
            raise DataError(f"{self.path}: not a file (an ASE database is one .db or .json file)")
        self.db = _open_database(self.path)
        try:
            self.ids = [row.id for row in (self.db.select(select) if select else self.db.select())]
        except _db_errors() as exc:
            if isinstance(exc, sqlite3.OperationalError) and "readonly" in str(exc):
                exc = "an SQLite file without ASE's tables"
            raise DataError(f"{self.path}: not a readable ASE database ({exc}); write it with ase.db.connect "
                            "or point to the right file") from None

    def __len__(self) -> int:
        return len(self.ids)

    def raw(self, index: int) -> Dict:
        row_id = self.ids[index]
        where = f"{self.path} row id {row_id} (frame {index})"
        try:
            row = self.db.get(id=row_id)
            atoms = row.toatoms()
        except _db_errors() as exc:
            raise DataError(f"{where}: damaged row ({type(exc).__name__}: {exc})") from exc
        if row.get("energy") is None or row.get("forces") is None:
            raise DataError(f"{where}: row has no energy/forces (a single-point calculation is needed)")
        return frame_from_atoms(atoms, row.energy, row.forces, sid=row.get("sid", row.id), fid=row.get("fid", 0),
                                where=where)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        return frame_to_tensors(self.raw(index))
