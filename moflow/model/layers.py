"""Invertible layers. Every ``forward`` returns (output, log|det J|); ``reverse`` inverts exactly.

Affine couplings use ``s = sigmoid(logits)``: the log-determinant is ``logsigmoid(logits)`` and the
inverse multiplies by ``1 / sigmoid(logits) = 1 + exp(-logits)``, both free of log(0) and 1/0.
"""
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn


class ActNorm(nn.Module):
    """Per-channel affine map ``y = exp(log_scale) * (x + loc)``.

    Initialised from data by :meth:`initialize` (called once before training, outside forward)
    so the output of each channel has zero mean and unit variance on the first batch.
    """

    def __init__(self, num_channels: int, channel_dim: int = 1):
        super().__init__()
        self.num_channels = num_channels
        self.channel_dim = channel_dim
        self.loc = nn.Parameter(torch.zeros(num_channels))
        self.log_scale = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("initialized", torch.tensor(False))

    def _view(self, t: torch.Tensor, ndim: int) -> torch.Tensor:
        shape = [1] * ndim
        shape[self.channel_dim] = self.num_channels
        return t.view(shape)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor, reduce_mean=None) -> None:
        """Set loc/scale from the per-channel mean and std of ``x`` (optionally averaged over ranks)."""
        flat = x.transpose(0, self.channel_dim).reshape(self.num_channels, -1).float()
        mean, std = flat.mean(1), flat.std(1)
        if reduce_mean is not None:
            mean, std = reduce_mean(mean), reduce_mean(std)
        self.loc.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + 1e-6))
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        ndim = x.dim()
        y = self._view(self.log_scale.exp(), ndim) * (x + self._view(self.loc, ndim))
        elems_per_channel = x[0].numel() // self.num_channels
        logdet = elems_per_channel * self.log_scale.sum()
        return y, logdet.expand(x.shape[0])

    def reverse(self, y: torch.Tensor) -> torch.Tensor:
        ndim = y.dim()
        return y * self._view((-self.log_scale).exp(), ndim) - self._view(self.loc, ndim)


class InvConv2d(nn.Module):
    """Invertible 1x1 convolution with a dense (orthogonally initialised) weight."""

    def __init__(self, channels: int):
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(channels, channels))
        self.weight = nn.Parameter(q)

    def forward(self, x):
        h, w = x.shape[-2:]
        logdet = h * w * torch.linalg.slogdet(self.weight.double())[1].to(x.dtype)
        return F.conv2d(x, self.weight[:, :, None, None].to(x.dtype)), logdet.expand(x.shape[0])

    def reverse(self, y):
        inv = torch.linalg.inv(self.weight.double()).to(y.dtype)
        return F.conv2d(y, inv[:, :, None, None])


class InvConv2dLU(nn.Module):
    """Invertible 1x1 convolution parameterised as W = P L (U + diag(sign * exp(log_s)))."""

    def __init__(self, channels: int):
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(channels, channels))
        p, lower, upper = torch.linalg.lu(q)
        s = torch.diagonal(upper)
        self.register_buffer("perm", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("upper_mask", torch.triu(torch.ones(channels, channels), 1))
        self.register_buffer("eye", torch.eye(channels))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(torch.abs(s)))

    def weight(self) -> torch.Tensor:
        lower = self.lower * self.upper_mask.T + self.eye
        upper = self.upper * self.upper_mask + torch.diag(self.sign_s * self.log_s.exp())
        return self.perm @ lower @ upper

    def forward(self, x):
        h, w = x.shape[-2:]
        out = F.conv2d(x, self.weight()[:, :, None, None].to(x.dtype))
        return out, (h * w * self.log_s.sum()).expand(x.shape[0])

    def reverse(self, y):
        inv = torch.linalg.inv(self.weight().double()).to(y.dtype)
        return F.conv2d(y, inv[:, :, None, None])


def _sum_per_sample(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).sum(1)


class AffineCoupling(nn.Module):
    """Glow coupling on channel halves; a 3x3 conv net of the kept half gives (logits, shift)."""

    def __init__(self, channels: int, hidden: Sequence[int], swap: bool = False):
        super().__init__()
        if channels % 2:
            raise ValueError(f"AffineCoupling needs an even channel count, got {channels}")
        self.swap = swap
        layers: List[nn.Module] = []
        last = channels // 2
        for h in hidden:
            layers += [nn.Conv2d(last, h, 3, padding=1), nn.BatchNorm2d(h), nn.ReLU(inplace=True)]
            last = h
        layers.append(nn.Conv2d(last, channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def _split(self, x):
        a, b = x.chunk(2, 1)
        return (b, a) if self.swap else (a, b)

    def _join(self, a, b):
        return torch.cat([b, a] if self.swap else [a, b], 1)

    def forward(self, x):
        a, b = self._split(x)
        logits, shift = self.net(a).chunk(2, 1)
        out_b = (b + shift) * torch.sigmoid(logits)
        return self._join(a, out_b), _sum_per_sample(F.logsigmoid(logits))

    def reverse(self, y):
        a, out_b = self._split(y)
        logits, shift = self.net(a).chunk(2, 1)
        b = out_b * (1 + torch.exp(-logits)) - shift
        return self._join(a, b)


class GraphConv(nn.Module):
    """Relational graph convolution: self term plus one message per bond channel, as one einsum."""

    def __init__(self, in_dim: int, out_dim: int, num_edge_types: int):
        super().__init__()
        self.out_dim = out_dim
        self.num_edge_types = num_edge_types
        self.self_linear = nn.Linear(in_dim, out_dim)
        self.edge_linear = nn.Linear(in_dim, out_dim * num_edge_types)

    def forward(self, adj: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """adj [B, E, N, N], h [B, N, C] -> [B, N, out]."""
        b, n, _ = h.shape
        messages = self.edge_linear(h).view(b, n, self.out_dim, self.num_edge_types)
        return self.self_linear(h) + torch.einsum("bemn,bnce->bmc", adj.to(messages.dtype), messages)


class GraphAffineCoupling(nn.Module):
    """Affine coupling over atom rows: the masked rows are updated from the other rows and the graph."""

    def __init__(self, n_node: int, in_dim: int, hidden_gnn: Sequence[int], hidden_lin: Sequence[int],
                 masked_rows: Sequence[int], num_edge_types: int):
        super().__init__()
        self.convs = nn.ModuleList()
        self.conv_norms = nn.ModuleList()
        last = in_dim
        for h in hidden_gnn:
            self.convs.append(GraphConv(last, h, num_edge_types))
            self.conv_norms.append(nn.BatchNorm1d(n_node))
            last = h
        lin: List[nn.Module] = []
        for h in hidden_lin:
            lin += [nn.Linear(last, h), nn.BatchNorm1d(n_node), nn.ReLU(inplace=True)]
            last = h
        lin.append(nn.Linear(last, 2 * in_dim))
        self.mlp = nn.Sequential(*lin)
        update = torch.zeros(n_node, 1)
        update[list(masked_rows)] = 1.0
        self.register_buffer("update_mask", update)  # 1 on rows this layer transforms

    def _logits_shift(self, adj, kept):
        h = kept
        for conv, norm in zip(self.convs, self.conv_norms):
            h = F.relu(norm(conv(adj, h)))
        logits, shift = self.mlp(h).chunk(2, -1)
        return logits, shift

    def forward(self, adj, x):
        keep = 1 - self.update_mask
        logits, shift = self._logits_shift(adj, x * keep)
        y = x * keep + self.update_mask * (x + shift) * torch.sigmoid(logits)
        return y, _sum_per_sample(self.update_mask * F.logsigmoid(logits))

    def reverse(self, adj, y):
        keep = 1 - self.update_mask
        logits, shift = self._logits_shift(adj, y * keep)
        return y * keep + self.update_mask * (y * (1 + torch.exp(-logits)) - shift)


def squeeze2d(x: torch.Tensor, fold: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, C*f*f, H/f, W/f]."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // fold, fold, w // fold, fold).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, c * fold * fold, h // fold, w // fold)


def unsqueeze2d(x: torch.Tensor, fold: int) -> torch.Tensor:
    """Inverse of :func:`squeeze2d`."""
    b, c, h, w = x.shape
    x = x.reshape(b, c // (fold * fold), fold, fold, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c // (fold * fold), h * fold, w * fold)

