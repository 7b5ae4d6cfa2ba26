"""OC20 S2EF LMDB files: one pickled record per frame under keys "0".."N-1", plus "length".

A record holds ``pos`` [N,3], ``cell`` [1,3,3], ``atomic_numbers`` [N], ``natoms``, ``tags`` [N]
(0 subsurface, 1 surface, 2 adsorbate), ``fixed`` [N] (1 = held fixed), ``energy`` (eV),
``forces`` [N,3] (eV/A), ``sid`` (system id) and ``fid`` (frame id). Records are stored as plain
dicts of numpy arrays, so reading needs neither torch_geometric nor torch. The legacy OC20 names
``y`` (energy) and ``force`` (forces) are accepted when reading.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Dict, Iterable, List, Union

import lmdb
import numpy as np
import torch
from torch.utils.data import Dataset

FIELDS = ("pos", "cell", "atomic_numbers", "natoms", "tags", "fixed", "energy", "forces", "sid", "fid")
_ALIASES = {"y": "energy", "force": "forces"}


def validate_frame(frame: Dict, where: str = "frame") -> Dict[str, np.ndarray]:
    """Check one record's fields and shapes; return it as numpy arrays in the stored dtypes."""
    frame = {_ALIASES.get(k, k): v for k, v in dict(frame).items()}
    missing = [f for f in FIELDS if f not in frame]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}; an S2EF record needs {list(FIELDS)}")

    def arr(name, dtype):
        value = frame[name]
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        return np.asarray(value, dtype=dtype)

    pos = arr("pos", np.float32)
    n = pos.shape[0]
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"{where}: 'pos' must have shape [N, 3], got {pos.shape}")
    out = {"pos": pos}
    for name, shape, dtype in (("forces", (n, 3), np.float32), ("atomic_numbers", (n,), np.int64),
                               ("tags", (n,), np.int64), ("fixed", (n,), np.int64)):
        value = arr(name, dtype)
        if value.shape != shape:
            raise ValueError(f"{where}: '{name}' must have shape {list(shape)}, got {list(value.shape)}")
        out[name] = value
    cell = arr("cell", np.float32)
    if cell.size != 9:
        raise ValueError(f"{where}: 'cell' must hold 3x3 numbers, got shape {cell.shape}")
    out["cell"] = cell.reshape(1, 3, 3)
    natoms = int(frame["natoms"])
    if natoms != n:
        raise ValueError(f"{where}: 'natoms'={natoms} but 'pos' has {n} rows")
    out["natoms"] = natoms
    energy = float(frame["energy"])
    if not np.isfinite(energy) or not np.isfinite(out["forces"]).all() or not np.isfinite(pos).all():
        raise ValueError(f"{where}: non-finite energy, forces or positions")
    out["energy"] = energy
    if out["atomic_numbers"].min(initial=1) < 1 or out["atomic_numbers"].max(initial=1) > 100:
        raise ValueError(f"{where}: atomic numbers must lie in 1..100, got {out['atomic_numbers'].tolist()}")
    out["sid"] = int(frame["sid"])
    out["fid"] = int(frame["fid"])
    return out


def write_lmdb(path: Union[str, Path], frames: Iterable[Dict], map_size: int = 1 << 32) -> int:
    """Write frames to a single-file LMDB at ``path`` (atomically: temp file, then rename).

    Returns the number of records written.
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
    finally:
        env.close()
    os.replace(tmp, path)
    return count


def _lmdb_files(path: Path) -> List[Path]:
    if path.is_dir():
        files = sorted(path.glob("*.lmdb"))
        if not files:
            raise FileNotFoundError(f"no *.lmdb files in directory {path}")
        return files
    if not path.exists():
        raise FileNotFoundError(f"LMDB file or directory not found: {path}")
    return [path]


_READERS: Dict = {}


def _open_readonly(file: Path):
    """One read-only environment per (process, file): LMDB forbids opening a file twice in a process."""
    key = (os.getpid(), str(Path(file).resolve()), os.stat(file).st_mtime_ns)
    if key not in _READERS:
        _READERS[key] = lmdb.open(str(file), subdir=False, readonly=True, lock=False, readahead=False,
                                  meminit=False, max_readers=1)
    return _READERS[key]


class LmdbDataset(Dataset):
    """Frames from one OC20 S2EF LMDB file or a directory of ``*.lmdb`` shards, as torch tensors.

    Environments open lazily in each process, so the dataset is safe with DataLoader workers.
    """

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)
        self.files = _lmdb_files(self.path)
        self._envs = None
        self.lengths = [self._read_length(f) for f in self.files]
        self.offsets = np.cumsum([0] + self.lengths)

    @staticmethod
    def _open(file: Path):
        return _open_readonly(file)

    def _read_length(self, file: Path) -> int:
        try:
            env = self._open(file)
            with env.begin() as txn:
                raw = txn.get(b"length")
                length = pickle.loads(raw) if raw is not None else env.stat()["entries"]
        except lmdb.Error as exc:
            raise ValueError(f"cannot read LMDB {file}: {exc}") from exc
        return int(length)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def raw(self, index: int) -> Dict:
        if not 0 <= index < len(self):
            raise IndexError(f"frame {index} out of range for {len(self)} frames in {self.path}")
        if self._envs is None:
            self._envs = [self._open(f) for f in self.files]
        shard = int(np.searchsorted(self.offsets, index, side="right") - 1)
        key = str(index - int(self.offsets[shard])).encode("ascii")
        with self._envs[shard].begin() as txn:
            raw = txn.get(key)
        if raw is None:
            raise KeyError(f"record {key.decode()} missing from {self.files[shard]}")
        return validate_frame(pickle.loads(raw), where=f"{self.files[shard]} record {key.decode()}")

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        return frame_to_tensors(self.raw(index))

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_envs"] = None
        return state


def frame_to_tensors(record: Dict) -> Dict[str, torch.Tensor]:
    """A validated record as tensors: float32 geometry, long integer fields."""
    return {
        "pos": torch.from_numpy(record["pos"]),
        "cell": torch.from_numpy(record["cell"]),
        "atomic_numbers": torch.from_numpy(record["atomic_numbers"]),
        "natoms": torch.tensor(record["natoms"]),
        "tags": torch.from_numpy(record["tags"]),
        "fixed": torch.from_numpy(record["fixed"]),
        "energy": torch.tensor(record["energy"], dtype=torch.float64),
        "forces": torch.from_numpy(record["forces"]),
        "sid": torch.tensor(record["sid"]),
        "fid": torch.tensor(record["fid"]),
    }
