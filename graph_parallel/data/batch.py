"""A batch of S2EF frames as one disjoint periodic graph."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Dict, List, Optional

import torch
from torch import Tensor

from .radius_graph import radius_graph_pbc


@dataclass
class S2EFBatch:
    pos: Tensor             # [N, 3]
    cell: Tensor            # [B, 3, 3]
    atomic_numbers: Tensor  # [N]
    natoms: Tensor          # [B]
    batch: Tensor           # [N] structure of each atom
    tags: Tensor            # [N]
    fixed: Tensor           # [N]
    energy: Tensor          # [B]
    forces: Tensor          # [N, 3]
    sid: Tensor             # [B]
    fid: Tensor             # [B]
    edge_index: Tensor      # [2, E] (source, target), sorted by target
    cell_offsets: Tensor    # [E, 3] integer image of each edge's source

    @property
    def num_structures(self) -> int:
        return self.natoms.numel()

    @property
    def num_atoms(self) -> int:
        return self.pos.shape[0]

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "S2EFBatch":
        """Move to ``device``; floating fields (geometry, targets) also cast to ``dtype`` if given."""
        def move(v: Tensor) -> Tensor:
            v = v.to(device) if device is not None else v
            return v.to(dtype) if (dtype is not None and v.is_floating_point()) else v
        return replace(self, **{f.name: move(getattr(self, f.name)) for f in fields(self)})


def collate_frames(frames: List[Dict[str, Tensor]], cutoff: float = 6.0, max_neighbors: int = 50,
                   symmetric: bool = False) -> S2EFBatch:
    """Concatenate frames and build each one's periodic radius graph (atom indices offset)."""
    if not frames:
        raise ValueError("collate_frames needs at least one frame")
    edges, offsets, start = [], [], 0
    for frame in frames:
        edge_index, cell_offsets = radius_graph_pbc(frame["pos"], frame["cell"], cutoff, max_neighbors,
                                                     symmetric=symmetric)
        edges.append(edge_index + start)
        offsets.append(cell_offsets)
        start += frame["pos"].shape[0]
    natoms = torch.tensor([f["pos"].shape[0] for f in frames])
    return S2EFBatch(
        pos=torch.cat([f["pos"] for f in frames]).float(),
        cell=torch.cat([f["cell"].reshape(1, 3, 3) for f in frames]).float(),
        atomic_numbers=torch.cat([f["atomic_numbers"] for f in frames]).long(),
        natoms=natoms,
        batch=torch.repeat_interleave(torch.arange(len(frames)), natoms),
        tags=torch.cat([f["tags"] for f in frames]).long(),
        fixed=torch.cat([f["fixed"] for f in frames]).long(),
        energy=torch.stack([f["energy"].reshape(()) for f in frames]).float(),
        forces=torch.cat([f["forces"] for f in frames]).float(),
        sid=torch.stack([f["sid"].reshape(()) for f in frames]),
        fid=torch.stack([f["fid"].reshape(()) for f in frames]),
        edge_index=torch.cat(edges, dim=1),
        cell_offsets=torch.cat(offsets).float(),
    )


class Collater:
    """Picklable collate_fn for DataLoader workers."""

    def __init__(self, cutoff: float = 6.0, max_neighbors: int = 50, symmetric: bool = False):
        self.cutoff, self.max_neighbors, self.symmetric = cutoff, max_neighbors, symmetric

    def __call__(self, frames):
        return collate_frames(frames, self.cutoff, self.max_neighbors, self.symmetric)
