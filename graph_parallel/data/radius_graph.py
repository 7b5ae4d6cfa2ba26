"""Radius graph under periodic boundary conditions, in plain PyTorch.

For each target atom i, every periodic image of every atom j within ``cutoff`` becomes an edge
j -> i with an integer cell offset s (the source sits at ``pos[j] + s @ cell``); the
``max_neighbors`` nearest are kept (ties broken by source index, then offset, deterministically).
"""
from __future__ import annotations

import itertools
import math
from typing import Sequence, Tuple

import torch
from torch import Tensor


def _image_range(pos: Tensor, cell: Tensor, pbc: Sequence[bool], cutoff: float) -> Tuple[int, int, int]:
    """How many cell repeats along each lattice vector can hold a neighbour within ``cutoff``.

    A pair's separation along lattice direction a is at least |frac difference + shift| times the
    spacing of lattice planes 1 / |b_a| (b = reciprocal vectors), so shifts up to
    cutoff * |b_a| + (spread of fractional coordinates) suffice; atoms outside the cell are fine.
    """
    inv = torch.linalg.inv(cell.double())                 # columns are reciprocal vectors (no 2 pi)
    frac = pos.double() @ inv
    reps = []
    for a in range(3):
        if not pbc[a]:
            reps.append(0)
            continue
        spread = (frac[:, a].max() - frac[:, a].min()).item() if len(pos) else 0.0
        reps.append(int(math.ceil(cutoff * inv[:, a].norm().item() + spread)))
    return tuple(reps)


def _sort_edges(k: Tensor, src: Tensor, tgt: Tensor, dist2: Tensor, num_offsets: int):
    """Order edges by (target, distance, source, offset) with stable sorts."""
    tie = torch.argsort(src * num_offsets + k, stable=True)
    k, src, tgt, dist2 = k[tie], src[tie], tgt[tie], dist2[tie]
    order = torch.argsort(dist2, stable=True)
    order = order[torch.argsort(tgt[order], stable=True)]
    return k[order], src[order], tgt[order]


def radius_graph_pbc(pos: Tensor, cell: Tensor, cutoff: float, max_neighbors: int,
                     pbc: Sequence[bool] = (True, True, True), symmetric: bool = False) -> Tuple[Tensor, Tensor]:
    """Edges of one structure: ``edge_index`` [2, E] (source, target) and ``cell_offsets`` [E, 3].

    Edges are sorted by target atom, then by distance. ``cell`` is [3, 3] with lattice vectors as
    rows (or [1, 3, 3]); directions with ``pbc`` False get no images. ``symmetric=True`` adds the
    reverse of every kept edge (GemNet needs each edge's reverse; an atom may then exceed
    ``max_neighbors``).
    """
    if pos.dim() != 2 or pos.shape[1] != 3:
        raise ValueError(f"pos must have shape [N, 3], got {tuple(pos.shape)}")
    cell = cell.reshape(3, 3)
    if cutoff <= 0 or max_neighbors < 1:
        raise ValueError(f"cutoff must be > 0 and max_neighbors >= 1, got {cutoff} and {max_neighbors}")
    if any(pbc) and abs(torch.linalg.det(cell.double()).item()) < 1e-8:
        raise ValueError("periodic structure has a singular cell (zero volume)")
    n = pos.shape[0]
    reps = _image_range(pos, cell, pbc, cutoff) if any(pbc) else (0, 0, 0)
    offsets = torch.tensor(list(itertools.product(*(range(-r, r + 1) for r in reps))), dtype=torch.long)
    pos64 = pos.detach().double()
    shifts = offsets.double() @ cell.detach().double()                           # [K, 3]
    # vec[k, j, i] = pos[j] + shift[k] - pos[i]  (source j, target i)
    vec = pos64[None, :, None, :] + shifts[:, None, None, :] - pos64[None, None, :, :]
    dist2 = (vec * vec).sum(-1)                                                  # [K, N, N]
    within = dist2 <= cutoff * cutoff
    zero = (offsets == 0).all(1)
    within[zero] &= ~torch.eye(n, dtype=torch.bool)                              # no self loops
    k, src, tgt = within.nonzero(as_tuple=True)
    all_dist2 = dist2
    k, src, tgt = _sort_edges(k, src, tgt, all_dist2[k, src, tgt], len(offsets))
    # rank of each edge among its target's edges; keep the nearest max_neighbors
    counts = torch.bincount(tgt, minlength=n)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(tgt)) - starts[tgt]
    keep = rank < max_neighbors
    k, src, tgt = k[keep], src[keep], tgt[keep]
    if symmetric:
        # offsets enumerate a symmetric grid, so offset index K-1-k is the negated offset
        codes = torch.cat([(k * n + src) * n + tgt, ((len(offsets) - 1 - k) * n + tgt) * n + src]).unique()
        k, src, tgt = codes // (n * n), (codes // n) % n, codes % n
        k, src, tgt = _sort_edges(k, src, tgt, all_dist2[k, src, tgt], len(offsets))
    return torch.stack([src, tgt]), offsets[k]


def _sort_by_target(src: Tensor, tgt: Tensor, offsets: Tensor, dist2: Tensor):
    """Order edges by (target, distance, source, offset), as radius_graph_pbc does."""
    key = torch.argsort((offsets + 1000) @ torch.tensor([2001 * 2001, 2001, 1]), stable=True)
    order = key[torch.argsort(src[key], stable=True)]
    order = order[torch.argsort(dist2[order], stable=True)]
    order = order[torch.argsort(tgt[order], stable=True)]
    return order


def one_sided_symmetric_edges(edge_index: Tensor, cell_offsets: Tensor, pos: Tensor, cell: Tensor):
    """fairchem GemNet's symmetric graph from a directed radius graph, sorted by target.

    Keeps the edges j->i with j < i (and, between images of the same atom, those whose cell offset
    is lexicographically negative), then adds the reverse of each. An edge whose own direction
    was dropped by the ``max_neighbors`` truncation is thus lost, where ``symmetric=True`` in
    :func:`radius_graph_pbc` would restore it (the two agree when no atom reaches the limit).
    """
    src, tgt = edge_index
    off = cell_offsets.round().long()
    earlier = (off[:, 0] < 0) | ((off[:, 0] == 0) & (off[:, 1] < 0)) | ((off[:, 0] == 0) & (off[:, 1] == 0)
                                                                         & (off[:, 2] < 0))
    keep = (src < tgt) | ((src == tgt) & earlier)
    src, tgt, off = src[keep], tgt[keep], off[keep]
    src, tgt, off = torch.cat([src, tgt]), torch.cat([tgt, src]), torch.cat([off, -off])
    vec = pos.detach().double()[src] + off.double() @ cell.detach().double().reshape(3, 3) - pos.detach().double()[tgt]
    order = _sort_by_target(src, tgt, off, (vec * vec).sum(-1))
    return torch.stack([src[order], tgt[order]]), off[order].to(cell_offsets.dtype)


EDGE_KINDS = ("directed", "union", "one_sided")


def structure_graph(pos: Tensor, cell: Tensor, cutoff: float, max_neighbors: int, kind: str = "directed",
                    pbc: Sequence[bool] = (True, True, True)) -> Tuple[Tensor, Tensor]:
    """The radius graph of one structure, of ``kind``: ``(edge_index, cell_offsets)``, sorted by target.

    ========== ==================================================================================
    directed   each atom's ``max_neighbors`` nearest sources (DimeNet++, here and in fairchem)
    union      directed plus the reverse of every kept edge (this project's GemNet default)
    one_sided  fairchem GemNet's: :func:`one_sided_symmetric_edges` of the directed graph
    ========== ==================================================================================

    The symmetric kinds agree when no atom reaches ``max_neighbors``.
    """
    if kind not in EDGE_KINDS:
        raise ValueError(f"unknown edge kind {kind!r}; choose from {EDGE_KINDS}")
    edge_index, cell_offsets = radius_graph_pbc(pos, cell, cutoff, max_neighbors, pbc=pbc, symmetric=kind == "union")
    if kind == "one_sided":
        return one_sided_symmetric_edges(edge_index, cell_offsets, pos, cell)
    return edge_index, cell_offsets
