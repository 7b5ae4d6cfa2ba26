"""Split one batch graph across the ranks of a graph-parallel group.

Atoms are split into contiguous, even chunks (sizes differ by at most one; no rank is empty).
Edges are sorted by target atom, so the edges a rank owns -- those whose target atom it holds --
form a contiguous chunk too, and all-gathering the ranks' edge chunks in rank order yields the
global edge order. A rank owns the triplets k->j->i of its edges j->i; their incoming edge k->j
may live on any rank and is read from the all-gathered edge tensor.

DimeNet++'s triplet sum also gets a padded per-atom layout (:func:`incoming_layout`): every triplet
(k->j, j->i) is a cell (j, slot of j->i among j's outgoing local edges, slot of k->j among j's
incoming edges), so the sum over k becomes one batched matmul per atom j instead of
[triplets, channels] gathers, products and scatters.
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


def _edges_into(tgt: Tensor, num_atoms: int, atoms: Tensor, edges: Tensor):
    """Pair each of ``edges`` with every edge whose target is that edge's atom in ``atoms``.

    Needs edges sorted by target. Returns ``(incoming, owner)``: global edge indices, grouped by
    ``owner`` in the order of ``edges``.
    """
    counts = torch.bincount(tgt, minlength=num_atoms)
    ptr = torch.cumsum(counts, 0) - counts
    n_in = counts[atoms]
    owner = torch.repeat_interleave(edges, n_in)
    within = torch.arange(int(n_in.sum())) - torch.repeat_interleave(torch.cumsum(n_in, 0) - n_in, n_in)
    return torch.repeat_interleave(ptr[atoms], n_in) + within, owner


def incoming_triplets(edge_index: Tensor, cell_offsets: Tensor, num_atoms: int, edges: Tensor):
    """Triplets (k->j, j->i) for the given edges j->i, excluding the reverse edge i->j of the same image.

    Returns ``(id_kj, id_ji)`` as global edge indices, grouped by ``id_ji`` in the order of ``edges``.
    """
    src, tgt = edge_index
    id_kj, id_ji = _edges_into(tgt, num_atoms, src[edges], edges)
    reverse = (src[id_kj] == tgt[id_ji]) & (cell_offsets[id_kj] == -cell_offsets[id_ji]).all(-1)
    return id_kj[~reverse], id_ji[~reverse]


def shared_target_triplets(edge_index: Tensor, num_atoms: int, edges: Tensor):
    """GemNet triplets: for each given edge c->a, every other edge b->a into the same atom.

    Returns ``(id_ba, id_ca, ragged)``: global edge indices grouped by ``id_ca`` in the order of
    ``edges``, and each triplet's position among those of its ``id_ca`` (for padded layouts).
    """
    tgt = edge_index[1]
    id_ba, id_ca = _edges_into(tgt, num_atoms, tgt[edges], edges)
    keep = id_ba != id_ca
    id_ba, id_ca = id_ba[keep], id_ca[keep]
    per_edge = torch.bincount(id_ca - edges.min(), minlength=len(edges)) if len(edges) else torch.zeros(0, dtype=torch.long)
    starts = torch.cumsum(per_edge, 0) - per_edge
    ragged = torch.arange(len(id_ca)) - torch.repeat_interleave(starts, per_edge)
    return id_ba, id_ca, ragged


def reverse_edges(edge_index: Tensor, cell_offsets: Tensor, edges: Tensor) -> Tensor:
    """Global index of the reverse (i->j, offset -s) of each given edge j->i (offset s).

    Raises ValueError when some reverse edge is missing (build the graph with ``symmetric=True``).
    """
    src, tgt = edge_index
    off = cell_offsets.round().long()
    if off.numel() and off.abs().max() > 1000:
        raise ValueError("cell offsets beyond +-1000 images are not supported")
    n = int(edge_index.max()) + 1 if edge_index.numel() else 1

    def key(s, t, o):
        o = o + 1000
        return ((s * n + t) * 2001 + o[:, 0]) * 2001 * 2001 + o[:, 1] * 2001 + o[:, 2]

    keys = key(src, tgt, off)
    order = torch.argsort(keys)
    wanted = key(tgt[edges], src[edges], -off[edges])
    pos = torch.searchsorted(keys[order], wanted).clamp(max=len(keys) - 1)
    found = keys[order][pos] == wanted
    if not bool(found.all()):
        raise ValueError(f"{int((~found).sum())} edge(s) have no reverse edge; GemNet needs a symmetric graph "
                         "(radius_graph_pbc(..., symmetric=True))")
    return order[pos]


def incoming_layout(edge_index: Tensor, num_atoms: int, edges: Tensor, id_kj: Tensor, id_ji: Tensor):
    """Padded per-atom layout of DimeNet triplets (k->j, j->i) of the given (contiguous) edges j->i.

    Returns ``(x_index, tri_row, tri_col, edge_row, shape)`` with ``shape = (J, K_out, K_in)``:
    ``x_index`` [J, K_in] global index of the k-th incoming edge of the j-th atom (J atoms: the
    sources of ``edges``; padding points at row ``E``, one past the last edge); ``tri_row`` [T]
    row ``j * K_out + slot of j->i`` and ``tri_col`` [T] slot of k->j of each triplet;
    ``edge_row`` [E_r] row of each given edge.
    """
    src, tgt = edge_index
    num_edges = tgt.numel()
    counts = torch.bincount(tgt, minlength=num_atoms)
    ptr = torch.cumsum(counts, 0) - counts
    src_r = src[edges]
    atoms, j_of_edge = torch.unique(src_r, return_inverse=True)                  # J atoms
    k_in = max(int(counts[atoms].max()) if atoms.numel() else 1, 1)
    slot = torch.arange(k_in)
    x_index = torch.where(slot < counts[atoms].unsqueeze(1), ptr[atoms].unsqueeze(1) + slot,
                          torch.full((), num_edges, dtype=torch.long))
    order = torch.argsort(j_of_edge, stable=True)
    out_counts = torch.bincount(j_of_edge, minlength=atoms.numel())
    k_out = max(int(out_counts.max()) if out_counts.numel() else 1, 1)
    out_slot = torch.empty_like(j_of_edge)
    out_slot[order] = torch.arange(order.numel()) - torch.repeat_interleave(torch.cumsum(out_counts, 0) - out_counts,
                                                                           out_counts)
    edge_row = j_of_edge * k_out + out_slot
    first = int(edges[0]) if edges.numel() else 0
    tri_row = edge_row[id_ji - first]
    tri_col = id_kj - ptr[tgt[id_kj]]
    return x_index, tri_row, tri_col, edge_row, (int(atoms.numel()), k_out, k_in)


INDEX_TENSORS = ("id_kj", "id_ji_local", "id3_ba_local", "id3_ca_local", "id3_ragged", "id_swap", "pad_x_index",
                 "pad_tri_row", "pad_tri_col", "pad_edge_row", "kj_edges", "id_kj_compact")


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
    # GemNet ("shared_target" triplets b->a, c->a; both edges are local) and reverse edges
    id3_ba_local: Tensor = None
    id3_ca_local: Tensor = None
    id3_ragged: Tensor = None
    id_swap: Tensor = None     # [E_r] global index of each local edge's reverse
    kmax: int = 1              # 1 + max of id3_ragged (a Python int: no device->host read per step)
    # DimeNet++ padded triplet layout (incoming_layout) and the incoming edges its triplets read
    pad_x_index: Tensor = None  # [J, K_in]
    pad_tri_row: Tensor = None  # [T_r]
    pad_tri_col: Tensor = None  # [T_r]
    pad_edge_row: Tensor = None  # [E_r]
    pad_shape: tuple = (0, 1, 1)
    kj_edges: Tensor = None     # [U] global indices of the edges k->j read by local triplets (gp > 1 only)
    id_kj_compact: Tensor = None  # [T_r] index of each triplet's k->j in kj_edges (gp > 1 only)

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
        for name in INDEX_TENSORS:
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name).to(device))
        return self


def partition_graph(edge_index: Tensor, cell_offsets: Tensor, num_atoms: int, rank: int = 0,
                    size: int = 1, triplets: str = "incoming") -> GraphPartition:
    """The share of graph-parallel rank ``rank`` out of ``size`` (``edge_index`` sorted by target).

    ``triplets="incoming"`` builds DimeNet triplets (k->j, j->i); ``"shared_target"`` builds GemNet
    triplets (b->a, c->a) and the reverse-edge map instead.
    """
    if triplets not in ("incoming", "shared_target"):
        raise ValueError(f"unknown triplet kind {triplets!r}")
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
    local = torch.arange(e0, e1)
    part = GraphPartition(rank=rank, size=size, atom_sizes=atom_sizes, edge_sizes=edge_sizes,
                          atom_start=int(atom_bounds[rank]), atom_end=int(atom_bounds[rank + 1]),
                          edge_start=e0, edge_end=e1, id_kj=None, id_ji_local=None)
    if triplets == "incoming":
        id_kj, id_ji = incoming_triplets(edge_index, cell_offsets, num_atoms, local)
        part.id_kj, part.id_ji_local = id_kj, id_ji - e0
        (part.pad_x_index, part.pad_tri_row, part.pad_tri_col, part.pad_edge_row,
         part.pad_shape) = incoming_layout(edge_index, num_atoms, local, id_kj, id_ji)
        if size > 1:
            part.kj_edges, part.id_kj_compact = torch.unique(id_kj, return_inverse=True)
    else:
        id_ba, id_ca, ragged = shared_target_triplets(edge_index, num_atoms, local)
        part.id3_ba_local, part.id3_ca_local, part.id3_ragged = id_ba - e0, id_ca - e0, ragged
        part.kmax = int(ragged.max()) + 1 if ragged.numel() else 1
        part.id_swap = reverse_edges(edge_index, cell_offsets, local)
    return part
