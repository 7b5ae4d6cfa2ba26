"""A batch of S2EF frames as one disjoint periodic graph, built (and partitioned) on the CPU.

=================  ==============================================================================
step               where and how
=================  ==============================================================================
collate            DataLoader workers (:class:`Collater`): concatenate frames, build each frame's
                   periodic radius graph, and -- given ``gp_rank``/``gp_size``/``triplets`` --
                   partition the batch graph for this graph-parallel rank
                   (:func:`graph_parallel.parallel.partition_graph`). The partition travels with
                   the batch (``batch.part``), so the training step never copies ``edge_index``
                   back from the GPU to partition it.
pin                ``batch.pin_memory()`` (the DataLoader calls it on CUDA: ``pin_memory=True``)
copy               ``batch.to(device, non_blocking=True)``: every tensor, the partition's too, once
=================  ==============================================================================
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Callable, Dict, List, Optional, Union

import torch
from torch import Tensor

from graph_parallel.parallel.partition import INDEX_TENSORS, GraphPartition, partition_graph
from graph_parallel.data.radius_graph import structure_graph

PARTITION_TENSORS = INDEX_TENSORS


def _map_partition(part: Optional[GraphPartition], fn: Callable[[Tensor], Tensor]) -> Optional[GraphPartition]:
    """A copy of ``part`` with ``fn`` applied to its index tensors (the original is left alone)."""
    if part is None:
        return None
    return replace(part, **{name: fn(getattr(part, name)) for name in PARTITION_TENSORS
                            if getattr(part, name) is not None})


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
    part: Optional[GraphPartition] = None   # this graph-parallel rank's share (set by the Collater)
    index: Optional[Tensor] = None          # [B] dataset index of each frame (set by the Collater)

    @property
    def num_structures(self) -> int:
        return self.natoms.numel()

    @property
    def num_atoms(self) -> int:
        return self.pos.shape[0]

    def _tensor_fields(self):
        return [f.name for f in fields(self) if isinstance(getattr(self, f.name), Tensor)]

    def to(self, device=None, dtype: Optional[torch.dtype] = None, non_blocking: bool = False) -> "S2EFBatch":
        """Move to ``device`` (the partition too); floating fields (geometry, targets) also cast to ``dtype``."""
        def move(v: Tensor) -> Tensor:
            v = v.to(device, non_blocking=non_blocking) if device is not None else v
            return v.to(dtype) if (dtype is not None and v.is_floating_point()) else v
        moved = {name: move(getattr(self, name)) for name in self._tensor_fields()}
        part = _map_partition(self.part, lambda t: t.to(device, non_blocking=non_blocking)) \
            if device is not None else self.part
        return replace(self, **moved, part=part)

    def pin_memory(self) -> "S2EFBatch":
        """Page-locked copies (what ``DataLoader(pin_memory=True)`` calls), so device copies can be asynchronous."""
        pinned = {name: getattr(self, name).pin_memory() for name in self._tensor_fields()}
        return replace(self, **pinned, part=_map_partition(self.part, Tensor.pin_memory))


def edge_kind_of(symmetric: Union[bool, str]) -> str:
    """``symmetric`` as an edge kind: False "directed", True "union", or a kind by name."""
    if isinstance(symmetric, bool):
        return "union" if symmetric else "directed"
    return symmetric


def collate_frames(frames: List[Dict[str, Tensor]], cutoff: float = 6.0, max_neighbors: int = 50,
                   symmetric: Union[bool, str] = False) -> S2EFBatch:
    """Concatenate frames and build each one's periodic radius graph (atom indices offset).

    ``symmetric``: False (directed), True (union) or an edge kind by name, e.g. "one_sided"
    (:func:`graph_parallel.data.radius_graph.structure_graph`)."""
    if not frames:
        raise ValueError("collate_frames needs at least one frame")
    kind = edge_kind_of(symmetric)
    edges, offsets, start = [], [], 0
    for frame in frames:
        edge_index, cell_offsets = structure_graph(frame["pos"], frame["cell"], cutoff, max_neighbors, kind)
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


class IndexedDataset(torch.utils.data.Dataset):
    """A dataset whose items also carry their index (for predictions written in dataset order)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Dict[str, Tensor]:
        return {**self.dataset[index], "index": torch.tensor(index)}


class Collater:
    """Picklable collate_fn for DataLoader workers: radius graphs, and the graph-parallel partition.

    ``symmetric`` is the edge kind (:func:`collate_frames`; ``graph_parallel.models.edge_kind(model)``).
    With ``triplets`` (``model.triplet_kind``) the batch also carries ``part``, the share of
    graph-parallel rank ``gp_rank`` of ``gp_size``; without it, ``part`` is None.
    """

    def __init__(self, cutoff: float = 6.0, max_neighbors: int = 50, symmetric: Union[bool, str] = False,
                 gp_rank: int = 0, gp_size: int = 1, triplets: Optional[str] = None):
        self.cutoff, self.max_neighbors, self.symmetric = cutoff, max_neighbors, symmetric
        self.gp_rank, self.gp_size, self.triplets = gp_rank, gp_size, triplets

    def __call__(self, frames) -> S2EFBatch:
        batch = collate_frames(frames, self.cutoff, self.max_neighbors, self.symmetric)
        if frames and "index" in frames[0]:
            batch.index = torch.stack([f["index"].reshape(()) for f in frames])
        if self.triplets is not None:
            batch.part = partition_graph(batch.edge_index, batch.cell_offsets, batch.num_atoms, self.gp_rank,
                                         self.gp_size, self.triplets)
        return batch
