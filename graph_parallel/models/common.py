"""Pieces shared by the graph-parallel models: edge geometry, residual layer, energy + forces."""
from __future__ import annotations

import contextlib
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from ..data.batch import S2EFBatch
from ..parallel import GraphPartition, all_reduce, gather


def edge_vectors(pos: Tensor, batch: S2EFBatch) -> Tuple[Tensor, Tensor]:
    """Vector from target to (imaged) source and its length for every edge of the batch, [E, 3] and [E]."""
    src, tgt = batch.edge_index
    cell = batch.cell.to(pos.dtype)[batch.batch[tgt]]                      # [E, 3, 3]
    shift = torch.einsum("ei,eij->ej", batch.cell_offsets.to(pos.dtype), cell)
    vec = pos[src] + shift - pos[tgt]
    return vec, vec.norm(dim=-1)


def triplet_cosines(vec: Tensor, dist: Tensor, part: GraphPartition) -> Tensor:
    """Cosine of the angle at j between j->i and j->k for the rank's triplets (k->j, j->i)."""
    id_ji = part.id_ji_local + part.edge_start
    to_i = -vec[id_ji]                       # vec[ji] points from i to j
    to_k = vec[part.id_kj]                   # vec[kj] points from j to k
    return (to_i * to_k).sum(-1) / (dist[id_ji] * dist[part.id_kj])


class ResidualLayer(nn.Module):
    def __init__(self, dim: int, act: nn.Module):
        super().__init__()
        self.lin1, self.lin2, self.act = nn.Linear(dim, dim), nn.Linear(dim, dim), act

    def forward(self, x: Tensor) -> Tensor:
        return x + self.act(self.lin2(self.act(self.lin1(x))))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def predict(model: nn.Module, batch: S2EFBatch, part: GraphPartition, group=None, compute_forces: bool = True,
            create_graph: bool = True) -> Tuple[Tensor, Optional[Tensor]]:
    """Energies [B] and forces [N, 3] of the whole batch, identical on every rank of the gp group.

    The model returns per-structure energy sums over this rank's atoms (and, for direct-force
    models, forces on this rank's atoms). Energies are all-reduced; conservative forces are
    -dE/dpos, where each rank's autograd pass yields its part of the gradient (cross-rank terms
    flow back through the collectives) and the parts are all-reduced.
    """
    direct = getattr(model, "direct_forces", False)
    pos = batch.pos.detach().requires_grad_(compute_forces and not direct)
    # conservative forces need autograd even during evaluation under torch.no_grad()
    with torch.enable_grad() if (compute_forces and not direct) else contextlib.nullcontext():
        energy_local, forces_local = model(pos, batch, part, group)
        energy = all_reduce(energy_local, group)
        if not compute_forces:
            return energy, None
        if direct:
            return energy, gather(forces_local, part.atom_sizes, group)
        (grad,) = torch.autograd.grad(energy_local.sum(), pos, create_graph=create_graph)
        return energy, -all_reduce(grad, group)
