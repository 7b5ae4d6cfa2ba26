"""Split one batch graph across the ranks of a graph-parallel group.

Atoms are split into contiguous, even chunks (sizes differ by at most one; no rank is empty).
Edges are sorted by target atom, so the edges a rank owns -- those whose target atom it holds --
form a contiguous chunk too, and all-gathering the ranks' edge chunks in rank order yields the
global edge order. A rank owns the triplets k->j->i of its edges j->i; their incoming edge k->j
may live on any rank and is read from the all-gathered edge tensor.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch
from torch import Tensor


def even_split(n: int, parts: int) -> List[int]:
    """Chunk sizes of n items over ``parts`` ranks, the first ``n % parts`` one larger."""
    if parts < 1:
        raise ValueError(f"need at least one part, got {parts}")
    if n < parts:
        raise ValueError(f"cannot split {n} atoms over {parts} graph-parallel ranks without leaving one empty; "
                         f"use a smaller --gp_size or a larger batch")
    return [n // parts + (1 if r < n % parts else 0) for r in range(parts)]


def incoming_triplets(edge_index: Tensor, cell_offsets: Tensor, num_atoms: int, edges: Tensor):
    """Triplets (k->j, j->i) for the given edges j->i, excluding the reverse edge i->j of the same image.

    Returns ``(id_kj, id_ji)`` as global edge indices, grouped by ``id_ji`` in the order of ``edges``.
    """
    src, tgt = edge_index
    counts = torch.bincount(tgt, minlength=num_atoms)
    ptr = torch.cumsum(counts, 0) - counts
    j = src[edges]
    n_in = counts[j]
    id_ji = torch.repeat_interleave(edges, n_in)
    within = torch.arange(int(n_in.sum())) - torch.repeat_interleave(torch.cumsum(n_in, 0) - n_in, n_in)
    id_kj = torch.repeat_interleave(ptr[j], n_in) + within
    reverse = (src[id_kj] == tgt[id_ji]) & (cell_offsets[id_kj] == -cell_offsets[id_ji]).all(-1)
    return id_kj[~reverse], id_ji[~reverse]


@dataclass
class GraphPartition:
    """What one graph-parallel rank computes. Edge indices are global unless named ``*_local``."""

    rank: int
    size: int
    atom_sizes: List[int]      # atoms per rank
    edge_sizes: List[int]      # edges per rank
    atom_start: int
    atom_end: int
    edge_start: int
    edge_end: int
    id_kj: Tensor              # [T_r] global index of each local triplet's incoming edge k->j
    id_ji_local: Tensor        # [T_r] local index of each local triplet's edge j->i

    @property
    def atoms(self) -> slice:
        return slice(self.atom_start, self.atom_end)

    @property
    def edges(self) -> slice:
        return slice(self.edge_start, self.edge_end)

    @property
    def num_local_atoms(self) -> int:
        return self.atom_end - self.atom_start

    @property
    def num_local_edges(self) -> int:
        return self.edge_end - self.edge_start

    def to(self, device) -> "GraphPartition":
        self.id_kj, self.id_ji_local = self.id_kj.to(device), self.id_ji_local.to(device)
        return self


def partition_graph(edge_index: Tensor, cell_offsets: Tensor, num_atoms: int, rank: int = 0,
                    size: int = 1) -> GraphPartition:
    """The share of graph-parallel rank ``rank`` out of ``size`` (``edge_index`` sorted by target)."""
    if not 0 <= rank < size:
        raise ValueError(f"rank {rank} outside a graph-parallel group of size {size}")
    edge_index, cell_offsets = edge_index.cpu(), cell_offsets.cpu()
    tgt = edge_index[1]
    if tgt.numel() and bool((tgt[1:] < tgt[:-1]).any()):
        raise ValueError("edge_index must be sorted by target atom (as radius_graph_pbc returns it)")
    atom_sizes = even_split(num_atoms, size)
    atom_bounds = torch.tensor([0] + atom_sizes).cumsum(0)
    edge_bounds = torch.searchsorted(tgt, atom_bounds)
    edge_sizes = (edge_bounds[1:] - edge_bounds[:-1]).tolist()
    e0, e1 = int(edge_bounds[rank]), int(edge_bounds[rank + 1])
    id_kj, id_ji = incoming_triplets(edge_index, cell_offsets, num_atoms, torch.arange(e0, e1))
    return GraphPartition(rank=rank, size=size, atom_sizes=atom_sizes, edge_sizes=edge_sizes,
                          atom_start=int(atom_bounds[rank]), atom_end=int(atom_bounds[rank + 1]),
                          edge_start=e0, edge_end=e1, id_kj=id_kj, id_ji_local=id_ji - e0)
