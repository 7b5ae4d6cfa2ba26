"""OC20 S2EF LMDB files: one pickled record per frame under keys "0".."N-1", plus "length".

Two record layouts are read, both through the restricted unpickler in :mod:`.safe_pickle`:

- ours: a plain dict of numpy arrays with the fields in :mod:`.records` (written by :func:`write_lmdb`);
- fairchem/OC20: a pickled ``torch_geometric.data.Data`` (PyG < 2.0 or >= 2.0 layout) with the same
  fields, or the legacy names ``y`` (energy) and ``force`` (forces); torch_geometric is not needed.

A dataset is one ``.lmdb`` file or a directory of them (fairchem's shards ``data.0000.lmdb``,
``data.0001.lmdb``, ... in name order). The number of frames in a file is its ``"length"`` entry if
present, else its entry count less the metadata keys (fairchem's rule); keys must then be
"0".."N-1": key N-1 is checked when the file is opened, any other missing key when it is read.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Dict, Iterable, Union

import lmdb
import numpy as np
import torch
from torch.utils.data import Dataset

from runtime.errors import DataError

from graph_parallel.data.lmdb_files import list_files, open_lmdb
from graph_parallel.data.records import FIELDS, REBUILD_HINT, frame_to_tensors, validate_frame
from graph_parallel.data.safe_pickle import load_record

__all__ = ["FIELDS", "LmdbDataset", "write_lmdb", "validate_frame", "frame_to_tensors", "METADATA_KEYS"]

METADATA_KEYS = (b"length", b"metadata")


def write_lmdb(path: Union[str, Path], frames: Iterable[Dict], map_size: int = 1 << 32) -> int:
    """Write frames to a single-file LMDB at ``path`` (atomically: temp file, then rename).

    Every frame is validated first (:func:`validate_frame`); a refused frame raises and leaves
    neither ``path`` nor a temporary file. Returns the number of records written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    for leftover in (tmp, Path(str(tmp) + "-lock")):
        if leftover.exists():
            leftover.unlink()
    env = lmdb.open(str(tmp), subdir=False, map_size=map_size, lock=False, meminit=False)
    count = 0
    try:
        with env.begin(write=True) as txn:
            for frame in frames:
                record = validate_frame(frame, where=f"frame {count}")
                txn.put(str(count).encode("ascii"), pickle.dumps(record, protocol=4))
                count += 1
            txn.put(b"length", pickle.dumps(count, protocol=4))
        env.sync()
    except BaseException:
        env.close()
        tmp.unlink(missing_ok=True)                   # a refused frame leaves no partial file behind
        raise
    env.close()
    os.replace(tmp, path)
    return count


class LmdbDataset(Dataset):
    """Frames from one OC20 S2EF LMDB file or a directory of ``*.lmdb`` shards, as torch tensors.

    Environments open lazily in each process, so the dataset is safe with DataLoader workers.
    ``raw(i)`` gives the validated numpy record; ``dataset[i]`` the tensors.
    """

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)
        self.files = list_files(self.path, (".lmdb",), "LMDB file or directory")
        self.lengths = [self._read_length(f) for f in self.files]
        self.offsets = np.cumsum([0] + self.lengths)

    @staticmethod
    def _read_length(file: Path) -> int:
        env = open_lmdb(file)
        try:
            with env.begin() as txn:
                raw = txn.get(b"length")
                present = sum(txn.get(k) is not None for k in METADATA_KEYS)
                entries = env.stat()["entries"] - present
                length = load_record(raw, f"{file} key 'length'") if raw is not None else entries
                if not isinstance(length, (int, np.integer)) or length < 0:
                    raise DataError(f"{file}: the 'length' entry holds {length!r}, not a frame count; {REBUILD_HINT}")
                length = int(length)
                if length > entries:
                    raise DataError(f"{file}: the 'length' entry says {length} frames but the file holds only "
                                    f"{entries} records; {REBUILD_HINT}")
                if length and txn.get(str(length - 1).encode("ascii")) is None:
                    raise DataError(f"{file}: expected keys '0'..'{length - 1}' but key '{length - 1}' is missing "
                                    "(an S2EF LMDB numbers its frames from 0)")
        except lmdb.Error as exc:
            raise DataError(f"{file}: damaged LMDB ({exc}); {REBUILD_HINT}") from exc
        return length

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int):
        """(file, key) of frame ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"frame {index} out of range for {len(self)} frames in {self.path}")
        shard = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return self.files[shard], str(index - int(self.offsets[shard]))

    def raw(self, index: int) -> Dict:
        file, key = self.locate(index)
        where = f"{file} key '{key}' (frame {index})"
        try:
            with open_lmdb(file).begin() as txn:
                raw = txn.get(key.encode("ascii"))
        except lmdb.Error as exc:
            raise DataError(f"{where}: damaged LMDB ({exc}); {REBUILD_HINT}") from exc
        if raw is None:
            raise DataError(f"{where}: record missing (keys must run '0'..'N-1'); {REBUILD_HINT}")
        return validate_frame(load_record(raw, where), where=where)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        return frame_to_tensors(self.raw(index))


