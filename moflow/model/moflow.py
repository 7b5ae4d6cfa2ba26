"""MoFlow (Zang & Wang, KDD 2020): bond Glow + graph conditional atom flow + Gaussian prior."""
import math
from typing import Callable, Optional, Tuple

import torch
from torch import nn

from moflow.config import ModelConfig
from moflow.model.glow import Glow, GraphGlow
from moflow.model.layers import ActNorm


def gaussian_nll(z: torch.Tensor, ln_var: torch.Tensor) -> torch.Tensor:
    """Per-sample negative log-density of z [B, D] under N(0, exp(ln_var) I)."""
    z = z.reshape(z.shape[0], -1).float()
    d = z.shape[1]
    ln_var = ln_var.float()
    return 0.5 * (d * (ln_var + math.log(2 * math.pi)).sum() + (z * z).sum(1) * torch.exp(-ln_var).sum())


class MoFlow(nn.Module):
    """Invertible map between (adjacency [B,4,N,N], atoms [B,N,A]) and a Gaussian latent.

    ``forward`` returns the latents and log-determinants; :meth:`nll` turns them into the
    training loss (bits per dimension); :meth:`reverse` maps z [B, z_dim] back to a molecule graph.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        self.bond_flow = Glow(c.num_bond_channels, c.b_n_flow, c.b_n_block, c.b_n_squeeze,
                              c.b_hidden_ch, c.b_conv_lu)
        self.atom_flow = GraphGlow(c.max_nodes, c.num_atom_channels, c.a_hidden_gnn, c.a_hidden_lin,
                                   c.a_n_flow, c.a_n_block, c.mask_row_size, c.mask_row_stride,
                                   c.num_bond_channels)
        # Learned prior log-variance (shared by all latent dimensions), as in the reference.
        if c.learn_dist:
            self.ln_var = nn.Parameter(torch.zeros(1))
        else:
            self.register_buffer("ln_var", torch.zeros(1))
        self.use_streams = False    # run bond and atom flows on two CUDA streams
        self._streams = None

    def dequantize(self, t: torch.Tensor) -> torch.Tensor:
        return t + torch.rand_like(t) * self.config.noise_scale

    def forward(self, adj: torch.Tensor, x: torch.Tensor, dequantize: Optional[bool] = None):
        """adj [B,4,N,N], x [B,N,A] one-hot -> (z_x, z_adj, logdet_x, logdet_adj)."""
        dequantize = self.training if dequantize is None else dequantize
        x_in = self.dequantize(x) if dequantize else x
        adj_in = self.dequantize(adj) if dequantize else adj
        if self.use_streams and adj.is_cuda:
            return self._forward_two_streams(adj, adj_in, x_in)
        z_x, logdet_x = self.atom_flow(adj, x_in)
        z_adj, logdet_adj = self.bond_flow(adj_in)
        return z_x, z_adj, logdet_x, logdet_adj

    def _forward_two_streams(self, adj, adj_in, x_in):
        if self._streams is None:
            self._streams = (torch.cuda.Stream(), torch.cuda.Stream())
        atom_stream, bond_stream = self._streams
        main = torch.cuda.current_stream()
        atom_stream.wait_stream(main)
        bond_stream.wait_stream(main)
        with torch.cuda.stream(atom_stream):
            z_x, logdet_x = self.atom_flow(adj, x_in)
        with torch.cuda.stream(bond_stream):
            z_adj, logdet_adj = self.bond_flow(adj_in)
        main.wait_stream(atom_stream)
        main.wait_stream(bond_stream)
        for t in (z_x, logdet_x):
            t.record_stream(main)
        for t in (z_adj, logdet_adj):
            t.record_stream(main)
        return z_x, z_adj, logdet_x, logdet_adj

    def nll(self, z_x, z_adj, logdet_x, logdet_adj, reduce: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
        """Negative log-likelihood in bits per dimension for atoms and bonds: batch means, or per
        molecule ``[B]`` with ``reduce=False``."""
        a_dim, b_dim = self.config.atom_dim, self.config.bond_dim
        nll_x = (gaussian_nll(z_x, self.ln_var) - logdet_x.float()) / (a_dim * math.log(2.0))
        nll_adj = (gaussian_nll(z_adj, self.ln_var) - logdet_adj.float()) / (b_dim * math.log(2.0))
        return (nll_x.mean(), nll_adj.mean()) if reduce else (nll_x, nll_adj)

    def sample_latent(self, batch_size: int, temperature: float = 0.7,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """z ~ N(0, temperature^2 * exp(ln_var)) of shape [B, z_dim]."""
        sigma = temperature * torch.exp(0.5 * self.ln_var.detach().float())
        device = self.ln_var.device
        z = torch.randn(batch_size, self.config.z_dim, generator=generator, device=device)
        return z * sigma

    @torch.no_grad()
    def reverse(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """z [B, z_dim] -> (adjacency one-hot [B,4,N,N], atom scores [B,N,A])."""
        c = self.config
        if z.dim() != 2 or z.shape[1] != c.z_dim:
            raise ValueError(f"latent must have shape [B, {c.z_dim}], got {tuple(z.shape)}")
        b, n = z.shape[0], c.max_nodes
        z_x = z[:, :c.atom_dim].reshape(b, n, c.num_atom_channels)
        z_adj = z[:, c.atom_dim:].reshape(b, c.num_bond_channels, n, n)
        adj_h = self.bond_flow.reverse(z_adj)
        adj_h = (adj_h + adj_h.transpose(2, 3)) / 2  # bonds are symmetric
        # argmax over bond channels made the contiguous last dimension (a strided argmax over dim 1
        # measured ~7x slower), then the one-hot built straight in [B, E, N, N] layout
        bond = adj_h.permute(0, 2, 3, 1).contiguous().argmax(-1)
        channels = torch.arange(c.num_bond_channels, device=z.device).view(1, -1, 1, 1)
        adj = (bond.unsqueeze(1) == channels).to(z.dtype)
        x = self.atom_flow.reverse(adj, z_x)
        return adj, x


class MoFlowObjective(nn.Module):
    """Module whose forward is the training loss, so DDP sees the prior variance as a parameter."""

    def __init__(self, model: MoFlow):
        super().__init__()
        self.model = model

    def forward(self, adj, x):
        nll_x, nll_adj = self.model.nll(*self.model(adj, x))
        return nll_x + nll_adj, nll_x.detach(), nll_adj.detach()


@torch.no_grad()
def initialize_actnorm(model: MoFlow, adj: torch.Tensor, x: torch.Tensor,
                       reduce_mean: Optional[Callable] = None) -> int:
    """Data-dependent ActNorm initialisation, run once before training (not inside forward).

    Hooks call :meth:`ActNorm.initialize` on each layer's input during one pass in training
    mode (with dequantisation); ``reduce_mean`` averages the statistics across ranks.
    Returns the number of ActNorm layers initialised.
    """
    handles, count = [], [0]

    def hook(module, inputs):
        if not bool(module.initialized):
            module.initialize(inputs[0], reduce_mean)
            count[0] += 1

    for m in model.modules():
        if isinstance(m, ActNorm):
            handles.append(m.register_forward_pre_hook(hook))
    was_training = model.training
    model.train()
    try:
        model(adj, x, dequantize=True)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return count[0]
