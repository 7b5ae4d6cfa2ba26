"""Equivariant multi-head graph self-attention block."""
from __future__ import annotations

import math
from typing import Dict

import torch
from torch import Tensor, nn

from runtime.graph import scatter_sum, segment_softmax
from se3_transformer.model.basis import Basis
from se3_transformer.model.fiber import Fiber, degree_to_dim
from se3_transformer.model.layers.convolution import ConvSE3, FuseLevel
from se3_transformer.model.layers.linear import LinearSE3


def to_heads(features: Dict[int, Tensor], fiber: Fiber, num_heads: int) -> Tensor:
    """``{d: [M, C, 2d+1]}`` -> ``[M, heads, -1]`` (channels split into heads, degrees concatenated)."""
    return torch.cat([features[d].reshape(features[d].shape[0], num_heads, -1) for d in fiber.degrees], dim=-1)


class AttentionSE3(nn.Module):
    """Dot-product attention over incoming edges; softmax per destination node and head."""

    def __init__(self, num_heads: int, key_fiber: Fiber, value_fiber: Fiber):
        super().__init__()
        self.num_heads, self.key_fiber, self.value_fiber = num_heads, key_fiber, value_fiber

    def forward(self, value: Dict[int, Tensor], key: Dict[int, Tensor], query: Dict[int, Tensor],
                edge_index: Tensor, num_nodes: int) -> Dict[int, Tensor]:
        dst = edge_index[1]
        k = to_heads(key, self.key_fiber, self.num_heads)                 # [E, H, Dk]
        q = to_heads(query, self.key_fiber, self.num_heads).index_select(0, dst)
        scores = (k * q).sum(-1) / math.sqrt(self.key_fiber.num_features)  # [E, H]
        weights = segment_softmax(scores.float(), dst, num_nodes).to(k.dtype)[..., None, None]
        out = {}
        for d, c in self.value_fiber:
            v = value[d].reshape(-1, self.num_heads, c // self.num_heads, degree_to_dim(d))
            out[d] = scatter_sum((weights * v).reshape(-1, c, degree_to_dim(d)), dst, num_nodes)
        return out


class AttentionBlockSE3(nn.Module):
    """Attention + skip connection + linear projection (Fuchs et al. 2020, NVIDIA layout).

    Keys and values come from ONE TFN convolution whose output fiber is ``value + key``; its
    output is split per degree along channels (values first). Queries are a linear map of the
    destination node's features, so keys only exist for degrees present in ``fiber_in``.
    """

    def __init__(self, fiber_in: Fiber, fiber_out: Fiber, edge_dim: int, max_degree: int, num_heads: int = 8,
                 channels_div: int = 2, use_layer_norm: bool = False, fuse_level: FuseLevel = FuseLevel.FULL,
                 low_memory: bool = False):
        super().__init__()
        for d, c in fiber_out:
            if c % channels_div or (c // channels_div) % num_heads:
                raise ValueError(f"degree {d}: {c} channels / channels_div {channels_div} must be a positive "
                                 f"multiple of num_heads {num_heads}")
        self.fiber_in = fiber_in
        self.value_fiber = Fiber({d: c // channels_div for d, c in fiber_out})
        self.key_fiber = Fiber({d: c for d, c in self.value_fiber if d in fiber_in})
        self.to_key_value = ConvSE3(fiber_in, self.value_fiber + self.key_fiber, edge_dim, max_degree, pool=False,
                                    use_layer_norm=use_layer_norm, fuse_level=fuse_level, low_memory=low_memory)
        self.to_query = LinearSE3(fiber_in, self.key_fiber)
        self.attention = AttentionSE3(num_heads, self.key_fiber, self.value_fiber)
        self.project = LinearSE3(self.value_fiber + fiber_in, fiber_out)

    def forward(self, features: Dict[int, Tensor], edge_scalars: Tensor, edge_index: Tensor,
                basis: Basis, paired_edges: bool = False) -> Dict[int, Tensor]:
        key_value = self.to_key_value(features, edge_scalars, edge_index, basis, paired_edges)
        key, value = {}, {}
        for d, kv in key_value.items():
            if d in self.key_fiber:
                value[d], key[d] = kv.chunk(2, dim=-2)
            else:
                value[d] = kv
        query = self.to_query(features)
        num_nodes = next(iter(features.values())).shape[0]
        z = self.attention(value, key, query, edge_index, num_nodes)
        z = {d: torch.cat([v, features[d]], dim=1) if d in features else v for d, v in z.items()}  # skip (concat)
        return self.project(z)
