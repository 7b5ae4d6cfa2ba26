"""Invertible layers. Every ``forward`` returns (output, log|det J|); ``reverse`` inverts exactly.

Affine couplings use ``s = sigmoid(logits)``: the log-determinant is ``logsigmoid(logits)`` and the
inverse multiplies by ``1 / sigmoid(logits) = 1 + exp(-logits)``, both free of log(0) and 1/0.
"""
from typing import List, Sequence, Tuple, Union

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


class WeightCache:
    """A value derived from some tensors, recomputed only when one of them changed.

    The key is each tensor's storage address, version counter (bumped by every in-place write:
    optimizer steps, ``load_state_dict``, ``copy_``), dtype and device, so a cached value is never
    stale. It serves only calls that build no autograd graph; a call that needs gradients through
    the value, or one being traced by torch.compile, computes it afresh. A CUDA graph captured after
    a warm-up call bakes the cached value in (which also keeps ``linalg.inv``'s host check out of the
    capture): capture again after changing the weights, as for any captured graph.
    """

    def __init__(self):
        self.key = None
        self.value = None

    def get(self, tensors, compute, *extra_key):
        if torch.compiler.is_compiling() or (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)):
            return compute()
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors) + extra_key
        if key != self.key:
            with torch.no_grad():
                self.value = compute()
            self.key = key
        return self.value


def inference_layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels-last layout for CPU calls that build no autograd graph, else unchanged.

    On CPU, oneDNN's 3x3 convolutions on the bond flow's small maps measured about 1.5x faster in
    channels-last layout and the 1x1 convolutions about 5x (:func:`conv1x1`); elementwise ops and
    ``cat`` keep the layout. Training steps (forward + backward) measured no gain and keep NCHW.
    """
    if x.device.type == "cpu" and x.dim() == 4 and not torch.is_grad_enabled() \
            and not torch.compiler.is_compiling():
        return x.contiguous(memory_format=torch.channels_last)
    return x


def conv1x1(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """1x1 convolution of ``x`` [B, C, H, W] by ``weight`` [C_out, C]: one matrix product on a
    channels-last input (a free view as [B*H*W, C]), ``F.conv2d`` otherwise."""
    b, c, h, w = x.shape
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        out = x.permute(0, 2, 3, 1).reshape(b * h * w, c) @ weight.t()
        return out.view(b, h, w, -1).permute(0, 3, 1, 2)
    return F.conv2d(x, weight[:, :, None, None])


class InvConv2d(nn.Module):
    """Invertible 1x1 convolution with a dense (orthogonally initialised) weight.

    The inverse weight (for ``reverse``) and log|det W| are cached between calls that need no
    gradient, until the weight changes (:class:`WeightCache`).
    """

    def __init__(self, channels: int):
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(channels, channels))
        self.weight = nn.Parameter(q)
        self._logdet = WeightCache()
        self._inverse = WeightCache()

    def forward(self, x):
        h, w = x.shape[-2:]
        logabsdet = self._logdet.get((self.weight,), lambda: torch.linalg.slogdet(self.weight.double())[1])
        logdet = h * w * logabsdet.to(x.dtype)
        return conv1x1(x, self.weight.to(x.dtype)), logdet.expand(x.shape[0])

    def reverse(self, y):
        inv = self._inverse.get((self.weight,), lambda: torch.linalg.inv(self.weight.double()).to(y.dtype), y.dtype)
        return conv1x1(y, inv)


class InvConv2dLU(nn.Module):
    """Invertible 1x1 convolution parameterised as W = P L (U + diag(sign * exp(log_s))).

    ``reverse`` caches the inverse weight between calls that need no gradient (:class:`WeightCache`).
    """

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
        self._inverse = WeightCache()

    def weight(self) -> torch.Tensor:
        lower = self.lower * self.upper_mask.T + self.eye
        upper = self.upper * self.upper_mask + torch.diag(self.sign_s * self.log_s.exp())
        return self.perm @ lower @ upper

    def forward(self, x):
        h, w = x.shape[-2:]
        out = conv1x1(x, self.weight().to(x.dtype))
        return out, (h * w * self.log_s.sum()).expand(x.shape[0])

    def reverse(self, y):
        tensors = (self.lower, self.upper, self.log_s, self.perm, self.sign_s, self.upper_mask, self.eye)
        inv = self._inverse.get(tensors, lambda: torch.linalg.inv(self.weight().double()).to(y.dtype), y.dtype)
        return conv1x1(y, inv)


def _sum_per_sample(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).sum(1)


def fold_batch_norms(net: nn.Sequential) -> List[Tuple[torch.Tensor, torch.Tensor, bool]]:
    """(weight, bias, relu_after) per convolution of an eval-mode Conv2d/BatchNorm2d/ReLU stack, each
    BatchNorm folded into the convolution before it: weight ``w * g / sqrt(v + eps)``, bias
    ``(b - m) * g / sqrt(v + eps) + beta``."""
    layers = list(net)
    folded = []
    for i, conv in enumerate(layers):
        if not isinstance(conv, nn.Conv2d):
            continue
        weight, bias = conv.weight, conv.bias
        following = layers[i + 1:i + 3]
        if following and isinstance(following[0], nn.BatchNorm2d):
            norm = following[0]
            scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
            weight = weight * scale[:, None, None, None]
            bias = (bias - norm.running_mean) * scale + norm.bias
        folded.append((weight, bias, any(isinstance(m, nn.ReLU) for m in following)))
    return folded


class AffineCoupling(nn.Module):
    """Glow coupling on channel halves; a 3x3 conv net of the kept half gives (logits, shift).

    Calls that build no autograd graph (sampling, evaluation) with the net in eval mode run it with
    each BatchNorm folded into its convolution (:func:`fold_batch_norms`, cached until a weight or
    statistic changes) and, on CPU, in channels-last layout (:func:`inference_layout`). Training
    steps run the plain modules.
    """

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
        self._folded = WeightCache()

    def _split(self, x):
        a, b = x.chunk(2, 1)
        return (b, a) if self.swap else (a, b)

    def _join(self, a, b):
        return torch.cat([b, a] if self.swap else [a, b], 1)

    def _logits_shift(self, a):
        if torch.is_grad_enabled() or self.net.training or torch.compiler.is_compiling():
            return self.net(a).chunk(2, 1)
        a = inference_layout(a)
        tensors = [*self.net.parameters(), *self.net.buffers()]
        for weight, bias, relu in self._folded.get(tensors, lambda: fold_batch_norms(self.net)):
            a = F.conv2d(a, weight, bias, padding=1)  # every conv of the net is 3x3 with padding 1
            if relu:
                a = F.relu_(a)
        return a.chunk(2, 1)

    def forward(self, x):
        a, b = self._split(x)
        logits, shift = self._logits_shift(a)
        out_b = (b + shift) * torch.sigmoid(logits)
        return self._join(a, out_b), _sum_per_sample(F.logsigmoid(logits))

    def reverse(self, y):
        a, out_b = self._split(y)
        logits, shift = self._logits_shift(a)
        b = out_b * (1 + torch.exp(-logits)) - shift
        return self._join(a, b)


Rows = Union[None, slice, torch.Tensor]


def select_rows(t: torch.Tensor, dim: int, rows: Union[slice, torch.Tensor]) -> torch.Tensor:
    """``t``'s atom rows along ``dim``: a contiguous ``slice`` gives a view, an index tensor a copy."""
    if isinstance(rows, slice):
        return t.narrow(dim, rows.start, rows.stop - rows.start)
    return t.index_select(dim, rows)


class GraphConv(nn.Module):
    """Relational graph convolution: a self term plus one message per bond channel.

    ``out[m] = W_self h[m] + b_self + sum_e sum_n adj[e, m, n] (W_e h[n] + b_e)``. The sum over
    neighbours is taken first (on the narrow input) and the self term, the messages and their
    biases then go through one matrix product: ``[h[m], A_1 h .. A_E h, deg_1 .. deg_E] @ W``.
    ``rows`` restricts the output to those atom rows (all inputs still contribute).
    """

    def __init__(self, in_dim: int, out_dim: int, num_edge_types: int):
        super().__init__()
        self.out_dim = out_dim
        self.num_edge_types = num_edge_types
        self.self_linear = nn.Linear(in_dim, out_dim)
        self.edge_linear = nn.Linear(in_dim, out_dim * num_edge_types)  # output index: out * E + e

    def forward(self, adj: torch.Tensor, h: torch.Tensor, rows: Rows = None) -> torch.Tensor:
        """adj [B, E, N, N], h [B, N, C] -> [B, N, out], or [B, R, out] for ``rows`` (see :func:`select_rows`)."""
        b, n, c = h.shape
        e = self.num_edge_types
        a = (adj if rows is None else select_rows(adj, 2, rows)).to(h.dtype)       # [B, E, R, N]
        r = a.shape[2]
        neighbours = torch.bmm(a.reshape(b, e * r, n), h).view(b, e, r, c)        # sum_n A_e[m, n] h[n]
        degree = a.sum(3)                                                          # [B, E, R]
        own = h if rows is None else select_rows(h, 1, rows)                       # [B, R, C]
        features = torch.cat([own, neighbours.transpose(1, 2).reshape(b, r, e * c), degree.transpose(1, 2)], 2)
        weight = torch.cat([self.self_linear.weight, self.edge_linear.weight.view(self.out_dim, e * c),
                            self.edge_linear.bias.view(self.out_dim, e)], 1)
        return F.linear(features, weight, self.self_linear.bias)


def _batch_norm_rows(norm: nn.BatchNorm1d, h: torch.Tensor, rows: Rows) -> torch.Tensor:
    """``norm(h_full)[:, rows]`` computed from ``h = h_full[:, rows]`` alone ([B, R, C]).

    A BatchNorm1d over atom rows normalises each row on its own, so the rows' slice of its
    parameters and statistics is all it needs; in training, only those rows' running statistics
    are updated (the others belong to outputs nobody reads).
    """
    if rows is None:
        return norm(h)
    momentum = 0.0
    if norm.training:
        norm.num_batches_tracked.add_(1)
        momentum = norm.momentum if norm.momentum is not None else 1.0 / float(norm.num_batches_tracked)
    mean, var = norm.running_mean[rows], norm.running_var[rows]  # views for a slice: updated in place
    out = F.batch_norm(h, mean, var, norm.weight[rows], norm.bias[rows], norm.training, momentum, norm.eps)
    if norm.training and not isinstance(rows, slice):
        norm.running_mean.index_copy_(0, rows, mean)
        norm.running_var.index_copy_(0, rows, var)
    return out


class GraphAffineCoupling(nn.Module):
    """Affine coupling over atom rows: the masked rows are updated from the other rows and the graph.

    Only the masked rows' (logits, shift) are ever used, and every layer after the last graph
    convolution acts on each row separately, so those layers run on the masked rows alone.
    """

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
        rows = sorted(set(int(r) for r in masked_rows))
        update = torch.zeros(n_node, 1)
        update[rows] = 1.0
        self.register_buffer("update_mask", update)  # 1 on rows this layer transforms (kept for checkpoints)
        self.register_buffer("rows", torch.tensor(rows, dtype=torch.long), persistent=False)
        contiguous = rows == list(range(rows[0], rows[0] + len(rows)))
        self._row_slice = slice(rows[0], rows[0] + len(rows)) if contiguous else None

    @property
    def row_index(self) -> Union[slice, torch.Tensor]:
        """The masked rows as a slice when they are consecutive (views, no copies), else as an index."""
        return self._row_slice if self._row_slice is not None else self.rows

    def _logits_shift(self, adj, x):
        """(logits, shift) [B, R, A] of the masked rows, from x with those rows zeroed."""
        row_index = self.row_index
        h = x.index_fill(1, self.rows, 0.0)
        if not self.convs:
            h = select_rows(h, 1, row_index)
        for i, (conv, norm) in enumerate(zip(self.convs, self.conv_norms)):
            rows = row_index if i == len(self.convs) - 1 else None
            h = F.relu(_batch_norm_rows(norm, conv(adj, h, rows), rows))
        for layer in self.mlp:
            h = _batch_norm_rows(layer, h, row_index) if isinstance(layer, nn.BatchNorm1d) else layer(h)
        logits, shift = h.chunk(2, -1)
        return logits, shift

    def forward(self, adj, x):
        logits, shift = self._logits_shift(adj, x)
        out = (select_rows(x, 1, self.row_index) + shift) * torch.sigmoid(logits)
        return x.index_copy(1, self.rows, out), _sum_per_sample(F.logsigmoid(logits))

    def reverse(self, adj, y):
        logits, shift = self._logits_shift(adj, y)
        x = select_rows(y, 1, self.row_index) * (1 + torch.exp(-logits)) - shift
        return y.index_copy(1, self.rows, x)


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

