"""The two flows of MoFlow: a Glow on the adjacency tensor and a graph conditional flow on atoms."""
from typing import Sequence

from torch import nn

from moflow.model.layers import (ActNorm, AffineCoupling, GraphAffineCoupling, InvConv2d,
                                 InvConv2dLU, squeeze2d, unsqueeze2d)


class GlowStep(nn.Module):
    """ActNorm -> optional invertible 1x1 conv -> affine coupling."""

    def __init__(self, channels: int, hidden: Sequence[int], conv_lu: int, swap: bool):
        super().__init__()
        self.actnorm = ActNorm(channels)
        self.invconv = {0: InvConv2d, 1: InvConv2dLU}.get(conv_lu, lambda c: None)(channels)
        self.coupling = AffineCoupling(channels, hidden, swap=swap)

    def forward(self, x):
        x, logdet = self.actnorm(x)
        if self.invconv is not None:
            x, ld = self.invconv(x)
            logdet = logdet + ld
        x, ld = self.coupling(x)
        return x, logdet + ld

    def reverse(self, y):
        y = self.coupling.reverse(y)
        if self.invconv is not None:
            y = self.invconv.reverse(y)
        return self.actnorm.reverse(y)


class GlowBlock(nn.Module):
    """Squeeze the N x N map by ``fold``, apply ``n_flow`` steps, unsqueeze."""

    def __init__(self, channels: int, n_flow: int, fold: int, hidden: Sequence[int], conv_lu: int):
        super().__init__()
        self.fold = fold
        squeezed = channels * fold * fold
        # Without a 1x1 conv (conv_lu=2) the coupling halves alternate so every channel gets updated.
        self.steps = nn.ModuleList(
            GlowStep(squeezed, hidden, conv_lu, swap=(conv_lu == 2 and i % 2 == 1)) for i in range(n_flow))

    def forward(self, x):
        x = squeeze2d(x, self.fold)
        logdet = x.new_zeros(x.shape[0])
        for step in self.steps:
            x, ld = step(x)
            logdet = logdet + ld
        return unsqueeze2d(x, self.fold), logdet

    def reverse(self, y):
        y = squeeze2d(y, self.fold)
        for step in reversed(self.steps):
            y = step.reverse(y)
        return unsqueeze2d(y, self.fold)


class Glow(nn.Module):
    """Bond flow: adjacency [B, E, N, N] -> latent of the same shape."""

    def __init__(self, channels: int, n_flow: int, n_block: int, fold: int, hidden: Sequence[int],
                 conv_lu: int):
        super().__init__()
        self.blocks = nn.ModuleList(GlowBlock(channels, n_flow, fold, hidden, conv_lu) for _ in range(n_block))

    def forward(self, adj):
        logdet = adj.new_zeros(adj.shape[0])
        for block in self.blocks:
            adj, ld = block(adj)
            logdet = logdet + ld
        return adj, logdet

    def reverse(self, z):
        for block in reversed(self.blocks):
            z = block.reverse(z)
        return z


class GraphFlowStep(nn.Module):
    """ActNorm over atom rows -> graph affine coupling of the masked rows."""

    def __init__(self, n_node, in_dim, hidden_gnn, hidden_lin, masked_rows, num_edge_types):
        super().__init__()
        self.actnorm = ActNorm(n_node, channel_dim=1)
        self.coupling = GraphAffineCoupling(n_node, in_dim, hidden_gnn, hidden_lin, masked_rows, num_edge_types)

    def forward(self, adj, x):
        x, logdet = self.actnorm(x)
        x, ld = self.coupling(adj, x)
        return x, logdet + ld

    def reverse(self, adj, y):
        return self.actnorm.reverse(self.coupling.reverse(adj, y))


class GraphGlow(nn.Module):
    """Graph conditional flow: atoms [B, N, A] given adjacency [B, E, N, N] -> latent [B, N, A].

    Step i of a block transforms rows ``i*stride .. i*stride + size - 1`` (mod N).
    """

    def __init__(self, n_node, in_dim, hidden_gnn, hidden_lin, n_flow, n_block, mask_row_size,
                 mask_row_stride, num_edge_types):
        super().__init__()
        self.steps = nn.ModuleList()
        for _ in range(n_block):
            for i in range(n_flow):
                start = i * mask_row_stride
                rows = [r % n_node for r in range(start, start + mask_row_size)]
                self.steps.append(GraphFlowStep(n_node, in_dim, hidden_gnn, hidden_lin, rows, num_edge_types))

    def forward(self, adj, x):
        logdet = x.new_zeros(x.shape[0])
        for step in self.steps:
            x, ld = step(adj, x)
            logdet = logdet + ld
        return x, logdet

    def reverse(self, adj, z):
        for step in reversed(self.steps):
            z = step.reverse(adj, z)
        return z
