"""A small graph-batch type and plain-PyTorch scatter operations shared by the graph models.

Edges follow the source -> destination convention: ``edge_index[0]`` holds source nodes and
``edge_index[1]`` the destination nodes that receive messages.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Optional, Sequence

import torch
from torch import Tensor


@dataclass
class GraphBatch:
    """A batch of graphs stored as one disjoint graph (PyG-style)."""

    pos: Tensor                          # [N, 3]
    edge_index: Tensor                   # [2, E] long, (source, destination)
    batch: Tensor                        # [N] long, graph id of each node
    ptr: Tensor                          # [B + 1] long, node offsets of each graph
    node_feats: Optional[Tensor] = None  # [N, F]
    edge_feats: Optional[Tensor] = None  # [E, D]
    y: Optional[Tensor] = None           # [B, ...] per-graph targets

    def __post_init__(self) -> None:
        if self.pos.dim() != 2 or self.pos.shape[-1] != 3:
            raise ValueError(f"GraphBatch.pos must have shape [N, 3], got {tuple(self.pos.shape)}")
        if self.edge_index.dim() != 2 or self.edge_index.shape[0] != 2:
            raise ValueError(f"GraphBatch.edge_index must have shape [2, E], got {tuple(self.edge_index.shape)}")
        n = self.pos.shape[0]
        if self.batch.shape != (n,):
            raise ValueError(f"GraphBatch.batch must have shape [{n}], got {tuple(self.batch.shape)}")
        if self.node_feats is not None and self.node_feats.shape[0] != n:
            raise ValueError(f"GraphBatch.node_feats has {self.node_feats.shape[0]} rows for {n} nodes")
        if self.edge_feats is not None and self.edge_feats.shape[0] != self.edge_index.shape[1]:
            raise ValueError(
                f"GraphBatch.edge_feats has {self.edge_feats.shape[0]} rows for {self.edge_index.shape[1]} edges")

    @property
    def num_graphs(self) -> int:
        return self.ptr.numel() - 1

    @property
    def num_nodes(self) -> int:
        return self.pos.shape[0]

    @property
    def num_edges(self) -> int:
        return self.edge_index.shape[1]

    def to(self, device, non_blocking: bool = False) -> "GraphBatch":
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        moved = {k: (v.to(device, non_blocking=non_blocking) if isinstance(v, Tensor) else v)
                 for k, v in moved.items()}
        return replace(self, **moved)

    def pin_memory(self) -> "GraphBatch":
        """Page-locked copy (DataLoader's ``pin_memory=True`` calls this), so ``to(device, non_blocking=True)``
        really overlaps the copy with compute."""
        return replace(self, **{f.name: getattr(self, f.name).pin_memory() for f in fields(self)
                                if isinstance(getattr(self, f.name), Tensor)})

    def rel_pos(self) -> Tensor:
        """Destination minus source position for every edge, [E, 3]."""
        src, dst = self.edge_index
        return self.pos.index_select(0, dst) - self.pos.index_select(0, src)

    @staticmethod
    def collate(graphs: Sequence["GraphBatch"]) -> "GraphBatch":
        """Concatenate graphs into one batch, offsetting edge indices by node counts."""
        if len(graphs) == 0:
            raise ValueError("GraphBatch.collate needs at least one graph")
        counts = torch.tensor([g.num_nodes for g in graphs], dtype=torch.long)
        ptr = torch.zeros(len(graphs) + 1, dtype=torch.long)
        ptr[1:] = torch.cumsum(counts, 0)
        edge_index = torch.cat([g.edge_index + ptr[i] for i, g in enumerate(graphs)], dim=1)
        batch = torch.repeat_interleave(torch.arange(len(graphs)), counts)

        def cat_optional(name: str) -> Optional[Tensor]:
            values = [getattr(g, name) for g in graphs]
            if all(v is None for v in values):
                return None
            if any(v is None for v in values):
                raise ValueError(f"GraphBatch.collate: '{name}' is set on some graphs but not others")
            return torch.cat(values, dim=0)

        return GraphBatch(pos=torch.cat([g.pos for g in graphs]), edge_index=edge_index, batch=batch,
                          ptr=ptr, node_feats=cat_optional("node_feats"),
                          edge_feats=cat_optional("edge_feats"), y=cat_optional("y"))


def _expand_index(index: Tensor, src: Tensor) -> Tensor:
    return index.view(-1, *([1] * (src.dim() - 1))).expand_as(src)


def scatter_sum(src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    """Sum rows of ``src`` into ``dim_size`` buckets given by ``index`` (along dim 0).

    fp16/bf16 rows are summed in float32 and the sums rounded once to the input dtype (autocast
    leaves ``index_add_`` in the input dtype, where a sum of a few hundred rows loses whole percents).
    """
    if src.dtype in (torch.float16, torch.bfloat16):
        return scatter_sum(src.float(), index, dim_size).to(src.dtype)
    out = src.new_zeros((dim_size, *src.shape[1:]))
    return out.index_add_(0, index, src)


def scatter_mean(src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    """Mean of rows per bucket; empty buckets give zero."""
    total = scatter_sum(src, index, dim_size)
    count = torch.zeros(dim_size, dtype=src.dtype, device=src.device).index_add_(
        0, index, torch.ones_like(index, dtype=src.dtype))
    return total / count.clamp(min=1).view(-1, *([1] * (src.dim() - 1)))


def scatter_max(src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    """Max of rows per bucket (values only); empty buckets give zero."""
    out = src.new_zeros((dim_size, *src.shape[1:]))
    return out.scatter_reduce(0, _expand_index(index, src), src, reduce="amax", include_self=False)


def segment_softmax(scores: Tensor, index: Tensor, num_segments: int) -> Tensor:
    """Softmax of ``scores`` over the rows that share a segment id (e.g. a destination node).

    Subtracts the per-segment max first, so large scores do not overflow, and computes in float32
    for half-precision inputs (the result has the input dtype).
    """
    if scores.dtype in (torch.float16, torch.bfloat16):
        return segment_softmax(scores.float(), index, num_segments).to(scores.dtype)
    seg_max = scores.new_full((num_segments, *scores.shape[1:]), float("-inf"))
    seg_max = seg_max.scatter_reduce(0, _expand_index(index, scores), scores.detach(), reduce="amax",
                                     include_self=True)
    exp = torch.exp(scores - seg_max.index_select(0, index))
    denom = scatter_sum(exp, index, num_segments).index_select(0, index)
    return exp / denom
