"""Read S2EF frames from an ASE database (``ase.db``: .db/.json files with energies and forces)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
import torch
from ase.constraints import FixAtoms
from torch.utils.data import Dataset

from .oc20_lmdb import frame_to_tensors, validate_frame


def frame_from_atoms(atoms, energy: float, forces, sid: int = 0, fid: int = 0) -> Dict:
    """An S2EF record from an ``ase.Atoms``: tags from ``atoms.get_tags()``, fixed from FixAtoms."""
    fixed = np.zeros(len(atoms), dtype=np.int64)
    for constraint in atoms.constraints:
        if isinstance(constraint, FixAtoms):
            fixed[constraint.get_indices()] = 1
    return validate_frame({
        "pos": atoms.get_positions(), "cell": np.asarray(atoms.get_cell()),
        "atomic_numbers": atoms.get_atomic_numbers(), "natoms": len(atoms), "tags": atoms.get_tags(),
        "fixed": fixed, "energy": energy, "forces": forces, "sid": sid, "fid": fid,
    }, where=f"atoms sid={sid} fid={fid}")


class AseDbDataset(Dataset):
    """Rows of an ASE database that carry energy and forces, as S2EF frames.

    ``sid`` is the row's ``sid`` key-value pair if present, else its id; ``fid`` likewise.
    """

    def __init__(self, path: Union[str, Path], select: Optional[str] = None):
        from ase.db import connect

        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"ASE database not found: {self.path}")
        self.db = connect(str(self.path))
        self.ids = [row.id for row in (self.db.select(select) if select else self.db.select())]

    def __len__(self) -> int:
        return len(self.ids)

    def raw(self, index: int) -> Dict:
        row = self.db.get(id=self.ids[index])
        if row.get("energy") is None or row.get("forces") is None:
            raise ValueError(f"{self.path} row {row.id} has no energy/forces (a single-point calculation is needed)")
        return frame_from_atoms(row.toatoms(), row.energy, row.forces, sid=int(row.get("sid", row.id)),
                                fid=int(row.get("fid", 0)))

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        return frame_to_tensors(self.raw(index))
