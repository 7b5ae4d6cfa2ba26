"""SE(3)-Transformer: stacked equivariant attention blocks, a final TFN convolution, pooling, MLP.

Reverse-edge sharing: molecular graphs hold every bond in both directions with the same bond
features and length, so both directions have the same radial kernels. A
:class:`~se3_transformer.model.pairing.PairedGraphBatch` (built by ``collate`` on the host) orders
its edges ``[A, reverse(A)]``, and the convolutions build each kernel once for both directions
(``paired_edges``), on any device and with no host read. Edge order does not change the function
(the attention softmax and the sums run per destination node), only the summation order of floats.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor, nn

from runtime.graph import GraphBatch
from se3_transformer.model.basis import Basis, fuse_basis, get_basis, pair_basis
from se3_transformer.model.fiber import Fiber
from se3_transformer.model.layers import AttentionBlockSE3, ConvSE3, FuseLevel, GraphPooling, NormSE3
from se3_transformer.model.pairing import PairedGraphBatch


def edge_scalars(batch: GraphBatch, rel_pos: Tensor) -> Tensor:
    """Invariant edge inputs of the radial MLPs: edge features (if any) and the edge length."""
    length = rel_pos.norm(dim=-1, keepdim=True)
    if batch.edge_feats is None:
        return length
    return torch.cat([batch.edge_feats.to(length.dtype), length], dim=-1)


class SE3Transformer(nn.Module):
    """Graph -> node features of ``fiber_out`` (or, with ``pooling``, pooled degree-0 features ``[B, C]``).

    ``fuse_level`` is an upper bound: each convolution uses the most fused kernel its fibers allow.
    ``low_memory`` uses unfused kernels recomputed in the backward pass. ``use_pad_trick`` pads the
    bases' odd output axis to an even size (meant for tensor cores; numerically identical).
    ``share_reverse_edges`` builds one kernel per pair of reverse edges of a ``PairedGraphBatch`` (module doc).
    """

    def __init__(self, fiber_in: Fiber, fiber_hidden: Fiber, fiber_out: Fiber, edge_dim: int, num_layers: int = 7,
                 num_heads: int = 8, channels_div: int = 2, norm: bool = True, use_layer_norm: bool = True,
                 pooling: Optional[str] = "max", fuse_level: FuseLevel = FuseLevel.FULL, low_memory: bool = False,
                 use_pad_trick: bool = False, share_reverse_edges: bool = True):
        super().__init__()
        self.share_reverse_edges = share_reverse_edges
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.max_degree = max(fiber_in.degrees + fiber_hidden.degrees + fiber_out.degrees)
        self.low_memory, self.use_pad_trick = low_memory, use_pad_trick and not low_memory
        fuse_level = FuseLevel.NONE if low_memory else FuseLevel(fuse_level)
        self.fuse_level = fuse_level
        blocks = []
        for _ in range(num_layers):
            blocks.append(AttentionBlockSE3(fiber_in, fiber_hidden, edge_dim, self.max_degree, num_heads, channels_div,
                                            use_layer_norm, fuse_level, low_memory))
            if norm:
                blocks.append(NormSE3(fiber_hidden))
            fiber_in = fiber_hidden
        self.blocks = nn.ModuleList(blocks)
        self.final_conv = ConvSE3(fiber_hidden, fiber_out, edge_dim, self.max_degree, pool=True,
                                  self_interaction=True, use_layer_norm=use_layer_norm, fuse_level=fuse_level,
                                  low_memory=low_memory)
        self.pooling = GraphPooling(pooling) if pooling else None

    def set_fuse_level(self, fuse_level: FuseLevel) -> None:
        """Change how kernels are evaluated (parameters are shared by all levels)."""
        self.fuse_level = FuseLevel(fuse_level)
        for module in self.modules():
            if isinstance(module, ConvSE3):
                module.set_fuse_level(self.fuse_level)

    def _fusion(self) -> dict:
        return dict(fully_fused=self.fuse_level == FuseLevel.FULL, partially_fused=self.fuse_level >= FuseLevel.PARTIAL)

    def hidden_features(self, batch: GraphBatch, basis: Optional[Basis] = None) -> Dict[int, Tensor]:
        """Node features after the attention blocks (before the final convolution)."""
        return self._run(batch, basis, stop_before_final=True)

    def forward(self, batch: GraphBatch, basis: Optional[Basis] = None):
        feats = self._run(batch, basis, stop_before_final=False)
        if self.pooling is None:
            return feats
        return self.pooling(feats, batch.batch, batch.num_graphs)

    def _run(self, batch: GraphBatch, basis: Optional[Basis], stop_before_final: bool) -> Dict[int, Tensor]:
        if batch.node_feats is None:
            raise ValueError("SE3Transformer needs node features (GraphBatch.node_feats is None)")
        rel_pos = batch.rel_pos()
        scalars = edge_scalars(batch, rel_pos)
        edge_index = batch.edge_index
        if basis is None:
            basis = get_basis(rel_pos, self.max_degree, self.use_pad_trick, **self._fusion())
        else:
            basis = fuse_basis(basis, **self._fusion())
        paired = self.share_reverse_edges and isinstance(batch, PairedGraphBatch)
        if paired and self.fuse_level == FuseLevel.NONE and not (self.low_memory or self.use_pad_trick):
            basis = pair_basis(basis)
        feats = {0: batch.node_feats.unsqueeze(-1)}
        for block in self.blocks:
            feats = block(feats, scalars, edge_index, basis, paired) if isinstance(block, AttentionBlockSE3) \
                else block(feats)
        if stop_before_final:
            return feats
        return self.final_conv(feats, scalars, edge_index, basis, paired)


class SE3TransformerPooled(nn.Module):
    """Molecule-level regressor: SE(3)-Transformer, max/mean pooling of invariant features, 2-layer MLP."""

    def __init__(self, node_dim: int, edge_dim: int, num_degrees: int = 4, num_channels: int = 32,
                 output_dim: int = 1, pooling: str = "max", **kwargs):
        super().__init__()
        self.num_degrees, self.num_channels = num_degrees, num_channels
        fiber_out = Fiber({0: num_degrees * num_channels})
        self.transformer = SE3Transformer(Fiber({0: node_dim}), Fiber.create(num_degrees, num_channels), fiber_out,
                                          edge_dim + 1, pooling=pooling, **kwargs)  # +1: edge length
        n = fiber_out.num_features
        self.mlp = nn.Sequential(nn.Linear(n, n), nn.ReLU(), nn.Linear(n, output_dim))

    def forward(self, batch: GraphBatch, basis: Optional[Basis] = None) -> Tensor:
        return self.mlp(self.transformer(batch, basis)).squeeze(-1)
