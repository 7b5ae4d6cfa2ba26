"""fairchem's ASE-LMDB datasets (``*.aselmdb``): ASE database rows stored in an LMDB file.

On-disk format (fairchem's ``LMDBDatabase``, now the ``aselmdb`` backend of ``ase-db-backends``),
read here directly with ``lmdb`` + ``zlib`` + ``json`` (neither fairchem nor ase-db-backends needed):

==================  =========================================================================
key (ascii)         value: ``zlib.compress`` of UTF-8 JSON
==================  =========================================================================
``"nextid"``        int: rows have ids 1..nextid-1 (absent: no rows)
``"deleted_ids"``   list of ids removed from that range (absent: none)
``"metadata"``      dict (absent: {})
``"<id>"``          one row: ``numbers``, ``positions``, ``cell``, ``pbc``, ``energy``,
                    ``forces``, ``tags``, ``constraints`` ([{"name": "FixAtoms", "kwargs":
                    {"indices": [...]}}]), ``key_value_pairs``, ``data``, ``ctime``, ...
==================  =========================================================================

Arrays are JSON lists (fairchem's own writer, orjson) or ASE's ``{"__ndarray__": [shape,
dtype, flat]}`` objects (ase-db-backends); both are read. Frame ``i`` is the ``i``-th live id in
increasing order, as fairchem's ``AseDBDataset``. ``sid``/``fid`` come from the row's
``key_value_pairs`` or ``data`` (``sid`` falls back to the row id, ``fid`` to 0); text ids map to
a stable hash (see :mod:`.records`). ``tags`` default to 0 and ``fixed`` comes from FixAtoms.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Dict, List, Union

import lmdb
import numpy as np
import torch
from torch.utils.data import Dataset

from runtime.errors import DataError

from graph_parallel.data.lmdb_files import list_files, open_lmdb
from graph_parallel.data.records import REBUILD_HINT, frame_to_tensors, validate_frame



def _json_hook(obj: Dict):
    if "__ndarray__" in obj:
        shape, dtype, flat = obj["__ndarray__"]
        array = np.empty(shape, dtype=dtype)
        flat_view = array.reshape(-1)
        if np.iscomplexobj(array):
            flat_view = flat_view.view(array.real.dtype)
        flat_view[:] = flat
        return array
    return obj


def decode_value(raw: bytes, where: str):
    """One ASE-LMDB value: zlib-compressed JSON, with ASE's ndarray objects as numpy arrays."""
    try:
        return json.loads(zlib.decompress(raw).decode("utf-8"), object_hook=_json_hook)
    except (zlib.error, UnicodeDecodeError, ValueError, TypeError, KeyError) as exc:
        raise DataError(f"{where}: damaged ASE-LMDB value, not zlib-compressed JSON ({type(exc).__name__}: "
                        f"{exc}); {REBUILD_HINT}") from exc


def _row_ids(file: Path) -> List[int]:
    env = open_lmdb(file)
    try:
        with env.begin() as txn:
            raw_next, raw_deleted = txn.get(b"nextid"), txn.get(b"deleted_ids")
    except lmdb.Error as exc:
        raise DataError(f"{file}: damaged LMDB ({exc}); {REBUILD_HINT}") from exc
    nextid = decode_value(raw_next, f"{file} key 'nextid'") if raw_next is not None else 1
    deleted = decode_value(raw_deleted, f"{file} key 'deleted_ids'") if raw_deleted is not None else []
    if not isinstance(nextid, int) or nextid < 1 or not isinstance(deleted, list):
        raise DataError(f"{file}: not an ASE-LMDB database ('nextid'={nextid!r}, 'deleted_ids' a "
                        f"{type(deleted).__name__})")
    gone = set(deleted)
    return [i for i in range(1, nextid) if i not in gone]


def _item(row: Dict, name: str):
    for source in (row.get("key_value_pairs") or {}, row.get("data") or {}):
        if isinstance(source, dict) and name in source:
            return source[name]
    return None


def frame_from_row(row: Dict, row_id: int, where: str) -> Dict:
    """The S2EF frame of one decoded ASE-LMDB row (validated)."""
    if not isinstance(row, dict) or "numbers" not in row or "positions" not in row:
        raise DataError(f"{where}: not an ASE database row (no 'numbers'/'positions')")
    for name in ("energy", "forces"):
        if row.get(name) is None:
            raise DataError(f"{where}: row has no '{name}' (S2EF training needs a single-point energy and forces)")
    numbers = np.asarray(row["numbers"])
    n = numbers.shape[0] if numbers.ndim else 0
    fixed = np.zeros(n, dtype=np.int64)
    for constraint in row.get("constraints") or []:
        if isinstance(constraint, dict) and constraint.get("name") == "FixAtoms":
            indices = np.asarray((constraint.get("kwargs") or {}).get("indices", []))
            if indices.dtype == bool:
                indices = np.nonzero(indices)[0]
            if indices.size and (indices.min() < 0 or indices.max() >= n):
                raise DataError(f"{where}: FixAtoms indices {indices.tolist()} out of range for {n} atoms")
            fixed[indices.astype(np.int64)] = 1
    sid, fid = _item(row, "sid"), _item(row, "fid")
    tags = row.get("tags")
    return validate_frame({
        "pos": row["positions"], "cell": row.get("cell", np.zeros((3, 3))), "atomic_numbers": numbers,
        "natoms": n, "tags": np.zeros(n, dtype=np.int64) if tags is None else tags, "fixed": fixed,
        "energy": row["energy"], "forces": row["forces"],
        "sid": row_id if sid is None else sid, "fid": 0 if fid is None else fid,
    }, where=where)


class AseLmdbDataset(Dataset):
    """Frames from one fairchem ``*.aselmdb`` file or a directory of them, as torch tensors.

    Files open lazily per process (DataLoader workers are fine); nothing is created or locked.
    """

    suffixes = (".aselmdb",)

    def __init__(self, path: Union[str, Path], suffixes=None):
        self.path = Path(path)
        self.files = list_files(self.path, tuple(suffixes or self.suffixes), "ASE-LMDB file or directory")
        self.ids = [_row_ids(f) for f in self.files]
        self.offsets = np.cumsum([0] + [len(i) for i in self.ids])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int):
        """(file, row id) of frame ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"frame {index} out of range for {len(self)} frames in {self.path}")
        shard = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return self.files[shard], self.ids[shard][index - int(self.offsets[shard])]

    def row(self, index: int) -> Dict:
        """The decoded ASE row of frame ``index`` (a dict, arrays as numpy)."""
        file, row_id = self.locate(index)
        where = f"{file} row id {row_id} (frame {index})"
        try:
            with open_lmdb(file).begin() as txn:
                raw = txn.get(str(row_id).encode("ascii"))
        except lmdb.Error as exc:
            raise DataError(f"{where}: damaged LMDB ({exc}); {REBUILD_HINT}") from exc
        if raw is None:
            raise DataError(f"{where}: row missing although 'nextid'/'deleted_ids' list it; {REBUILD_HINT}")
        return decode_value(raw, where)

    def raw(self, index: int) -> Dict:
        file, row_id = self.locate(index)
        return frame_from_row(self.row(index), row_id, f"{file} row id {row_id} (frame {index})")

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        return frame_to_tensors(self.raw(index))
