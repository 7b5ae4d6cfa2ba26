"""Reverse-edge pairing: the edge order in which both directions of a bond share one radial kernel.

Contract: a :class:`PairedGraphBatch` holds its ``E`` edges as ``[A, reverse(A)]``: edge ``e + E/2``
is edge ``e`` reversed, with equal edge features (so equal lengths and equal radial kernels). The
model trusts the type and reads no tensor value to check it, so the shared kernel costs no host read
on any device. :func:`pair_reverse_edges` builds one on the host (``collate``, in the data loader);
a batch with a self-loop, a repeated edge, a missing reverse or per-direction features stays a plain
:class:`~runtime.graph.GraphBatch` and runs the unshared path.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional, Tuple

import torch
from torch import Tensor

from runtime.graph import GraphBatch


@dataclass
class PairedGraphBatch(GraphBatch):
    """A :class:`GraphBatch` whose edges are ordered ``[A, reverse(A)]`` (see the module contract)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_edges % 2:
            raise ValueError(f"PairedGraphBatch needs an even edge count, got {self.num_edges}")


def reverse_edge_order(edge_index: Tensor, edge_feats: Optional[Tensor] = None) -> Optional[Tensor]:
    """A permutation ``perm`` with ``edge_index[:, perm] = [A, reverse(A)]`` and equal ``edge_feats`` for
    both halves, or ``None`` when some edge has no such twin. Reads tensor values: CPU tensors only."""
    src, dst = edge_index[0], edge_index[1]
    num_edges = src.numel()
    if num_edges == 0 or num_edges % 2:
        return None
    base = int(edge_index.max()) + 1
    key, reverse_key = src * base + dst, dst * base + src
    sorted_key, order = torch.sort(key)
    twin = order[torch.searchsorted(sorted_key, reverse_key).clamp_(max=num_edges - 1)]
    first = torch.nonzero(src < dst).squeeze(1)
    if 2 * first.numel() != num_edges or not torch.equal(key[twin], reverse_key) \
            or not torch.equal(twin[twin], torch.arange(num_edges)):
        return None  # self-loops, a missing reverse or a repeated edge
    perm = torch.cat([first, twin[first]])
    if edge_feats is not None and not torch.equal(edge_feats[first], edge_feats[perm[first.numel():]]):
        return None
    return perm


def pair_reverse_edges(graph: GraphBatch) -> Tuple[GraphBatch, Optional[Tensor]]:
    """``(graph with its edges reordered as a PairedGraphBatch, perm)``, or ``(graph, None)`` unchanged
    when its edges cannot be paired. ``perm`` reorders any other per-edge data (cached bases)."""
    perm = reverse_edge_order(graph.edge_index, graph.edge_feats)
    if perm is None:
        return graph, None
    values = {f.name: getattr(graph, f.name) for f in fields(graph)}
    values.update(edge_index=graph.edge_index[:, perm],
                  edge_feats=None if graph.edge_feats is None else graph.edge_feats[perm])
    return PairedGraphBatch(**values), perm
