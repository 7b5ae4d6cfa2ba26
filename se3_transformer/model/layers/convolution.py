"""Tensor field network convolution with radial profiles and three fusion levels.

Each convolution owns ONE radial MLP (shared trunk, bias-free last layer). The rows of that last
layer are grouped in blocks, one per ``(degree_in, degree_out)`` pair, each laid out
``[C_out, C_in, num_freq]``. The fusion level only changes how the kernel is evaluated:

- ``FULL``: one matmul over all degree pairs (uniform channels, all degrees on both sides);
- ``PARTIAL``: one matmul per output degree (uniform input channels, all input degrees) or, failing
  that, per input degree (uniform output channels, all output degrees);
- ``NONE``: one matmul per degree pair (always possible).

For each level the needed rows of the last layer are gathered with a precomputed index, so the
same parameters give the same function at every level and a checkpoint loads at any level.

Paired edges (``paired_edges=True``): the caller promises that edge ``e + E/2`` is the reverse of
edge ``e`` with the same invariant inputs (a ``pairing.PairedGraphBatch``). The radial MLP
then runs on the first half only and each kernel ``[E/2, C_out, C_in * F]`` is built once and
applied to both directions in one batched matmul: half the kernel work and memory, same function.
"""
from __future__ import annotations

import math
from enum import IntEnum
from typing import Dict, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from runtime.graph import scatter_sum
from se3_transformer.model.basis import Basis, num_frequencies
from se3_transformer.model.fiber import Fiber, degree_to_dim, unfuse_features


class FuseLevel(IntEnum):
    NONE = 0
    PARTIAL = 1
    FULL = 2


class RadialProfile(nn.Module):
    """Invariant edge features -> kernel weights: Linear, [LayerNorm], ReLU, twice, then bias-free Linear."""

    def __init__(self, edge_dim: int, num_rows: int, mid_dim: int = 32, use_layer_norm: bool = False):
        super().__init__()
        layers = []
        for fan_in in (edge_dim, mid_dim):
            layers.append(nn.Linear(fan_in, mid_dim))
            if use_layer_norm:
                layers.append(nn.LayerNorm(mid_dim))
            layers.append(nn.ReLU())
        self.trunk = nn.Sequential(*layers)
        self.weight = nn.Parameter(torch.empty(num_rows, mid_dim))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # same as nn.Linear

    def kernel(self, hidden: Tensor, rows: Union[Tensor, slice], channels_out: int) -> Tensor:
        """Weights ``[E, C_out, C_in * num_freq]`` from trunk output ``hidden`` and the selected rows."""
        weight = self.weight[rows] if isinstance(rows, slice) else self.weight.index_select(0, rows)
        return (hidden @ weight.t()).view(hidden.shape[0], channels_out, -1)


def contract(weights: Tensor, features: Tensor, basis: Optional[Tensor]) -> Tensor:
    """``out[e,o,k] = sum_{c,f,l} weights[e,o,c*F+f] features[e,c,l] basis[e,l,f,k]``.

    ``basis=None`` is the degree-0 -> degree-0 case where the basis is the constant 1. When
    ``weights`` has half as many edges as ``features`` (paired edges), row ``e`` of ``weights`` serves
    edges ``e`` and ``e + E/2``: both directions go through one matmul ``[E/2, O, CF] @ [E/2, CF, 2K]``.
    """
    num_edges, channels_in, in_dim = features.shape
    if basis is None:
        tmp = features
    else:
        tmp = (features @ basis.reshape(num_edges, in_dim, -1)).view(
            num_edges, channels_in * basis.shape[2], basis.shape[3])
    if weights.shape[0] == num_edges:
        return weights @ tmp
    half, rows, k = num_edges // 2, tmp.shape[1], tmp.shape[2]
    both = tmp.view(2, half, rows, k).permute(1, 2, 0, 3).reshape(half, rows, 2 * k)
    out = weights @ both
    return out.view(half, -1, 2, k).permute(2, 0, 1, 3).reshape(num_edges, -1, k)


class ConvSE3(nn.Module):
    """SE(3)-equivariant graph convolution (TFN layer) from ``fiber_in`` to ``fiber_out``.

    Messages flow along ``edge_index[0] -> edge_index[1]``. With ``pool`` the per-edge outputs are
    summed into destination nodes, otherwise the per-edge outputs are returned. With
    ``self_interaction`` a linear map of the destination node's own features is added per edge.
    ``low_memory`` recomputes kernels in the backward pass (activation checkpointing).
    """

    def __init__(self, fiber_in: Fiber, fiber_out: Fiber, edge_dim: int, max_degree: int, pool: bool = True,
                 self_interaction: bool = False, use_layer_norm: bool = False,
                 fuse_level: FuseLevel = FuseLevel.FULL, low_memory: bool = False, mid_dim: int = 32):
        super().__init__()
        self.fiber_in, self.fiber_out = fiber_in, fiber_out
        self.max_degree = max_degree
        self.pool, self.self_interaction, self.low_memory = pool, self_interaction, low_memory
        if max(fiber_in.degrees + fiber_out.degrees) > max_degree:
            raise ValueError(f"fibers {fiber_in} -> {fiber_out} exceed max_degree={max_degree}")

        # Canonical layout of the last radial layer: blocks per (d_in, d_out), output-degree-major.
        self.pairs = [(l, k) for k in fiber_out.degrees for l in fiber_in.degrees]
        self.offsets: Dict[tuple, int] = {}
        total = 0
        for l, k in self.pairs:
            self.offsets[(l, k)] = total
            total += fiber_out[k] * fiber_in[l] * num_frequencies(l, k)
        self.radial = RadialProfile(edge_dim, total, mid_dim, use_layer_norm)

        if self_interaction:
            self.self_weights = nn.ParameterDict({
                str(k): nn.Parameter(torch.randn(c, fiber_in[k]) / math.sqrt(fiber_in[k]))
                for k, c in fiber_out if k in fiber_in})
        self.set_fuse_level(fuse_level)

    # ----- fusion level -----------------------------------------------------------------------
    def _rows(self, pairs, channels_out: int, channels_in: int) -> Tensor:
        """Row index laid out ``[C_out, C_in, sum_f]`` concatenating the frequencies of ``pairs``."""
        blocks = []
        for l, k in pairs:
            nf = num_frequencies(l, k)
            blocks.append(self.offsets[(l, k)] + np.arange(channels_out * channels_in * nf).reshape(
                channels_out, channels_in, nf))
        return torch.as_tensor(np.concatenate(blocks, axis=2).reshape(-1), device=self.radial.weight.device)

    def set_fuse_level(self, fuse_level: FuseLevel) -> None:
        """Use the highest fusion level ``<= fuse_level`` whose conditions hold for these fibers."""
        all_degrees = list(range(self.max_degree + 1))
        c_in, c_out = self.fiber_in.unique_channels, self.fiber_out.unique_channels
        full_in = c_in is not None and self.fiber_in.degrees == all_degrees
        full_out = c_out is not None and self.fiber_out.degrees == all_degrees
        self.index: Dict[str, Tensor] = {}
        if fuse_level >= FuseLevel.FULL and full_in and full_out:
            self.used_fuse_level, self.fused_side = FuseLevel.FULL, None
            self.index["full"] = self._rows([(l, k) for k in all_degrees for l in all_degrees], c_out, c_in)
        elif fuse_level >= FuseLevel.PARTIAL and full_in:
            self.used_fuse_level, self.fused_side = FuseLevel.PARTIAL, "out"
            for k, c in self.fiber_out:
                self.index[f"out{k}"] = self._rows([(l, k) for l in all_degrees], c, c_in)
        elif fuse_level >= FuseLevel.PARTIAL and full_out:
            self.used_fuse_level, self.fused_side = FuseLevel.PARTIAL, "in"
            for l, c in self.fiber_in:
                self.index[f"in{l}"] = self._rows([(l, k) for k in all_degrees], c_out, c)
        else:
            self.used_fuse_level, self.fused_side = FuseLevel.NONE, None

    def _apply(self, fn, *args, **kwargs):
        module = super()._apply(fn, *args, **kwargs)
        self.index = {key: fn(idx) for key, idx in self.index.items()}  # follow .to(device)
        return module

    # ----- forward ----------------------------------------------------------------------------
    def _paired_pairwise(self, hidden: Tensor, in_feats, basis: Basis) -> Dict[int, Tensor]:
        """Pairwise kernels on paired edges with the ``pair{l}{k}`` bases (unpadded): both directions side
        by side (``[E/2, C, 2 (2l+1)]``) from input to output, split back into ``[E, C_out, 2k+1]``
        once per output degree."""
        half = hidden.shape[0]
        paired = {l: x.view(2, half, x.shape[1], x.shape[2]).permute(1, 2, 0, 3).reshape(half, x.shape[1], -1)
                  for l, x in zip(self.fiber_in.degrees, in_feats)}
        out = {}
        for k, c_out in self.fiber_out:
            acc = 0
            for l in self.fiber_in.degrees:
                start = self.offsets[(l, k)]
                rows = slice(start, start + c_out * self.fiber_in[l] * num_frequencies(l, k))
                weights = self.radial.kernel(hidden, rows, c_out)
                x = paired[l]
                tmp = x if (l, k) == (0, 0) else (x @ basis[f"pair{l}{k}"]).view(
                    half, x.shape[1] * num_frequencies(l, k), -1)
                acc = acc + weights @ tmp  # [E/2, C_out, 2 (2k+1)]
            out[k] = acc.view(half, c_out, 2, -1).permute(2, 0, 1, 3).reshape(2 * half, c_out, -1)
        return out

    def _kernel_apply(self, hidden: Tensor, rows, channels_out: int, features: Tensor,
                      basis: Optional[Tensor]) -> Tensor:
        weights = self.radial.kernel(hidden, rows, channels_out)
        return contract(weights, features, basis)

    def _conv(self, hidden, rows, channels_out, features, basis, out_dim: Optional[int] = None) -> Tensor:
        if self.low_memory and torch.is_grad_enabled():
            out = checkpoint(self._kernel_apply, hidden, rows, channels_out, features, basis, use_reentrant=False,
                             preserve_rng_state=False)  # the kernels draw no random numbers
        else:
            out = self._kernel_apply(hidden, rows, channels_out, features, basis)
        return out if out_dim is None else out[..., :out_dim]  # drop the pad-trick column

    def forward(self, node_feats: Dict[int, Tensor], edge_scalars: Tensor, edge_index: Tensor,
                basis: Basis, paired_edges: bool = False) -> Dict[int, Tensor]:
        src, dst = edge_index[0], edge_index[1]
        hidden = self.radial.trunk(edge_scalars[:edge_scalars.shape[0] // 2] if paired_edges else edge_scalars)
        in_feats = [node_feats[l].index_select(0, src) for l in self.fiber_in.degrees]
        out_degrees = self.fiber_out.degrees

        if self.used_fuse_level == FuseLevel.FULL:
            fused = self._conv(hidden, self.index["full"], self.fiber_out.unique_channels,
                               torch.cat(in_feats, dim=-1), basis["full"])
            out = unfuse_features(fused, out_degrees)
        elif self.fused_side == "out":
            x = torch.cat(in_feats, dim=-1)
            out = {k: self._conv(hidden, self.index[f"out{k}"], c, x, basis[f"out{k}"], degree_to_dim(k))
                   for k, c in self.fiber_out}
        elif self.fused_side == "in":
            fused = 0
            for l, x in zip(self.fiber_in.degrees, in_feats):
                fused = fused + self._conv(hidden, self.index[f"in{l}"], self.fiber_out.unique_channels, x,
                                           basis[f"in{l}"])
            out = unfuse_features(fused, out_degrees)
        elif paired_edges and not (self.low_memory and torch.is_grad_enabled()) and "pair01" in basis:
            out = self._paired_pairwise(hidden, in_feats, basis)
        else:
            out = {}
            for k, c_out in self.fiber_out:
                acc = 0
                for l, x in zip(self.fiber_in.degrees, in_feats):
                    start = self.offsets[(l, k)]
                    rows = slice(start, start + c_out * self.fiber_in[l] * num_frequencies(l, k))
                    pair_basis = None if (l, k) == (0, 0) else basis[(l, k)]
                    acc = acc + self._conv(hidden, rows, c_out, x, pair_basis, degree_to_dim(k))
                out[k] = acc

        if self.self_interaction:
            for k in out_degrees:
                if str(k) in self.self_weights:
                    out[k] = out[k] + self.self_weights[str(k)] @ node_feats[k].index_select(0, dst)
        if self.pool:
            num_nodes = next(iter(node_feats.values())).shape[0]
            out = {k: scatter_sum(v, dst, num_nodes) for k, v in out.items()}
        return out
