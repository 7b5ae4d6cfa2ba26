"""DimeNet++ (Gasteiger et al., 2020) in graph-parallel form.

Messages live on directed edges j->i. A rank owns the edges whose target atom it holds and the
triplets k->j->i of those edges. Per interaction block the only communication is one all-gather of
the down-projected edge messages (``int_emb_size`` wide, the narrowest tensor of the block), which
each triplet reads at its incoming edge k->j; the reduce-scatter in its backward pass brings the
other ranks' gradient contributions home. Output blocks sum edges into their (local) target atoms.
A rank computes edge geometry for its own edges and the incoming edges its triplets read, only.

Triplet sum: sum_k x_kj * W2 (W1 sbf_kji) (W1, W2 the bias-free ``lin_sbf1``/``lin_sbf2``) is
evaluated as W2-contraction of sum_k (W1 sbf_kji) x_kj, a batched matmul per atom j over the padded
layout of :func:`graph_parallel.parallel.partition.incoming_layout`: no [triplets, int_emb] tensor
is formed (those products, gathers and scatters were most of a training step's time and memory).

Angles are interior angles at j between j->i and j->k (PyG and fairchem use the supplementary
angle, so their spherical basis differs by (-1)^l; see graph_parallel.convert). Two options
reproduce fairchem's OC20 DimeNet++: ``output_up_bias`` (its output up-projection has a bias)
and ``detach_angles`` (it detaches positions in the angle, so its forces lack the angular term).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from runtime.graph import scatter_sum

from graph_parallel.data.batch import S2EFBatch
from graph_parallel.parallel import GraphPartition, gather
from graph_parallel.models.basis import BesselBasis, SphericalBasis
from graph_parallel.models.common import (FusedSiLU, ResidualLayer, at_least_float32, edge_vectors,
                                          pair_linear, parallel_linear, triplet_cosines)


def triplet_sum(x_kj: Tensor, s_kji: Tensor, weight: Tensor, part: GraphPartition) -> Tensor:
    """out[ji, c] = sum over triplets (k->j, j->i) of x_kj[kj, c] * sum_b weight[c, b] s_kji[t, b], [E_local, C].

    ``x_kj`` [E, C] over all edges, ``s_kji`` [T_local, B]; one bmm per atom j of the padded layout.
    """
    j_atoms, k_out, k_in = part.pad_shape
    b = s_kji.shape[1]
    x_pad = torch.cat([x_kj, x_kj.new_zeros(1, x_kj.shape[1])]).index_select(0, part.pad_x_index.reshape(-1))
    x_pad = x_pad.view(j_atoms, k_in, -1)                                                    # [J, K_in, C]
    channel = torch.arange(b, device=s_kji.device).unsqueeze(0)
    s_pad = s_kji.new_zeros(j_atoms * k_out, b, k_in).index_put(
        (part.pad_tri_row.unsqueeze(1), channel, part.pad_tri_col.unsqueeze(1)), s_kji)   # [J K_out, B, K_in]
    r = torch.bmm(s_pad.view(j_atoms, k_out * b, k_in), x_pad).view(j_atoms * k_out, b, -1)
    return (r * weight.t().unsqueeze(0)).sum(1).index_select(0, part.pad_edge_row)


@dataclass
class DimeNetPPConfig:
    hidden_channels: int = 192
    out_emb_channels: int = 192
    int_emb_size: int = 64
    basis_emb_size: int = 8
    num_blocks: int = 3
    num_spherical: int = 7
    num_radial: int = 6
    cutoff: float = 6.0
    envelope_exponent: int = 5
    num_before_skip: int = 1
    num_after_skip: int = 2
    num_output_layers: int = 3
    num_elements: int = 100
    output_up_bias: bool = False        # fairchem's OutputPPBlock.lin_up has a bias; PyG's has none
    detach_angles: bool = False         # fairchem: angles do not enter -dE/dpos (its forces miss that term)


PRESETS = {
    # tiny: for tests and CPU quick starts (not a published configuration)
    "small": DimeNetPPConfig(hidden_channels=32, out_emb_channels=32, int_emb_size=16, basis_emb_size=4,
                             num_blocks=2),
    "base": DimeNetPPConfig(),                                                  # OC20 DimeNet++ (~1.8M)
    "large": DimeNetPPConfig(hidden_channels=512, out_emb_channels=512),        # OC20 DimeNet++-Large
    "xl": DimeNetPPConfig(hidden_channels=2048, out_emb_channels=1536, int_emb_size=256, num_blocks=4),
}


class EmbeddingBlock(nn.Module):
    def __init__(self, cfg: DimeNetPPConfig, act: nn.Module):
        super().__init__()
        self.emb = nn.Embedding(cfg.num_elements, cfg.hidden_channels)
        self.lin_rbf = nn.Linear(cfg.num_radial, cfg.hidden_channels)
        self.lin = nn.Linear(3 * cfg.hidden_channels, cfg.hidden_channels)
        self.act = act

    def forward(self, z: Tensor, rbf: Tensor, src: Tensor, tgt: Tensor) -> Tensor:
        # lin([h_tgt, h_src, act(lin_rbf(rbf))]) with the atom parts projected per atom, then gathered
        return self.act(pair_linear(self.emb(z - 1), tgt, src, self.act(self.lin_rbf(rbf)), self.lin))


class InteractionPPBlock(nn.Module):
    def __init__(self, cfg: DimeNetPPConfig, act: nn.Module):
        super().__init__()
        h, i, b = cfg.hidden_channels, cfg.int_emb_size, cfg.basis_emb_size
        self.lin_rbf1 = nn.Linear(cfg.num_radial, b, bias=False)
        self.lin_rbf2 = nn.Linear(b, h, bias=False)
        self.lin_sbf1 = nn.Linear(cfg.num_spherical * cfg.num_radial, b, bias=False)
        self.lin_sbf2 = nn.Linear(b, i, bias=False)
        self.lin_kj, self.lin_ji = nn.Linear(h, h), nn.Linear(h, h)
        self.lin_down = nn.Linear(h, i, bias=False)
        self.lin_up = nn.Linear(i, h, bias=False)
        self.before_skip = nn.ModuleList(ResidualLayer(h, act) for _ in range(cfg.num_before_skip))
        self.lin = nn.Linear(h, h)
        self.after_skip = nn.ModuleList(ResidualLayer(h, act) for _ in range(cfg.num_after_skip))
        self.act = act

    def forward(self, m: Tensor, rbf: Tensor, sbf_down: Tensor, part: GraphPartition, group) -> Tensor:
        """``sbf_down`` [T_local, basis_emb]: this block's ``lin_sbf1`` of the spherical basis (computed
        for all blocks in one matmul by :class:`DimeNetPP`)."""
        x_ji, x_kj = parallel_linear(m, self.lin_ji, self.lin_kj, act=self.act)      # one [E, h] x [h, 2h] GEMM
        x_kj = x_kj * self.lin_rbf2(self.lin_rbf1(rbf))
        x_kj = self.act(self.lin_down(x_kj))                                # [E_local, int_emb]
        x_kj = gather(x_kj, part.edge_sizes, group)                          # [E, int_emb]: all edges
        x_kj = triplet_sum(x_kj, sbf_down, self.lin_sbf2.weight, part)       # [E_local, int_emb]
        h = x_ji + self.act(self.lin_up(x_kj))
        for layer in self.before_skip:
            h = layer(h)
        h = self.act(self.lin(h)) + m
        for layer in self.after_skip:
            h = layer(h)
        return h


class OutputPPBlock(nn.Module):
    def __init__(self, cfg: DimeNetPPConfig, act: nn.Module):
        super().__init__()
        self.lin_rbf = nn.Linear(cfg.num_radial, cfg.hidden_channels, bias=False)
        self.lin_up = nn.Linear(cfg.hidden_channels, cfg.out_emb_channels, bias=cfg.output_up_bias)
        self.lins = nn.ModuleList(nn.Linear(cfg.out_emb_channels, cfg.out_emb_channels)
                                  for _ in range(cfg.num_output_layers))
        self.lin = nn.Linear(cfg.out_emb_channels, 1, bias=False)
        nn.init.zeros_(self.lin.weight)                                     # as DimeNet: start from E = 0
        self.act = act

    def forward(self, m: Tensor, rbf: Tensor, tgt_local: Tensor, num_local_atoms: int) -> Tensor:
        x = scatter_sum(self.lin_rbf(rbf) * m, tgt_local, num_local_atoms)
        x = self.lin_up(x)
        for lin in self.lins:
            x = self.act(lin(x))
        return self.lin(x).squeeze(-1)                                       # [A_local]


class DimeNetPP(nn.Module):
    """Energy model; forces are conservative (see :func:`graph_parallel.models.predict`)."""

    direct_forces = False
    triplet_kind = "incoming"
    symmetric_graph = False

    def __init__(self, cfg: DimeNetPPConfig = DimeNetPPConfig()):
        super().__init__()
        self.cfg = cfg
        act = FusedSiLU()       # silu with fused first and second derivatives (forces are trained through it)
        self.rbf = BesselBasis(cfg.num_radial, cfg.cutoff, cfg.envelope_exponent)
        self.sbf = SphericalBasis(cfg.num_spherical, cfg.num_radial, cfg.cutoff, cfg.envelope_exponent)
        self.embedding = EmbeddingBlock(cfg, act)
        self.interactions = nn.ModuleList(InteractionPPBlock(cfg, act) for _ in range(cfg.num_blocks))
        self.outputs = nn.ModuleList(OutputPPBlock(cfg, act) for _ in range(cfg.num_blocks + 1))

    def config_dict(self) -> dict:
        return asdict(self.cfg)

    def forward(self, pos: Tensor, batch: S2EFBatch, part: GraphPartition, group=None):
        """Per-structure energy summed over this rank's atoms, [B]; no direct forces."""
        local = part.edges
        src, tgt = batch.edge_index[:, local]
        vec, dist = edge_vectors(pos, batch, local)                           # [E_local, 3], [E_local]
        if part.kj_edges is None:                                             # one rank: all edges are local
            vec_kj, dist_kj, id_kj = vec, dist, part.id_kj
        else:                                                                 # the incoming edges triplets read
            (vec_kj, dist_kj), id_kj = edge_vectors(pos, batch, part.kj_edges), part.id_kj_compact
        rbf = self.rbf(dist)                                                  # [E_local, R]
        # radial part per edge (far fewer than triplets), then read at each triplet's k->j
        geometry = (vec, dist, vec_kj, dist_kj)
        if self.cfg.detach_angles:
            geometry = tuple(t.detach() for t in geometry)
        cos = triplet_cosines(*geometry, part.id_ji_local, id_kj)
        sbf = self.sbf(self.sbf.radial(dist_kj).index_select(0, id_kj), cos)                  # [T_local, L * R]
        # every block's lin_sbf1 in one matmul: the [T, L * R] basis is read once, and its gradient
        # comes from one matmul instead of one per block plus their sum
        w1 = torch.cat([block.lin_sbf1.weight for block in self.interactions])
        sbf_down = (sbf @ w1.t()).split(self.cfg.basis_emb_size, dim=1)
        tgt_local = tgt - part.atom_start
        m = self.embedding(batch.atomic_numbers, rbf, src, tgt)
        # energies accumulate in float32 under autocast (blocks, atoms, then the gp all-reduce)
        atom_energy = at_least_float32(self.outputs[0](m, rbf, tgt_local, part.num_local_atoms))
        for interaction, output, s in zip(self.interactions, self.outputs[1:], sbf_down):
            m = interaction(m, rbf, s, part, group)
            atom_energy = atom_energy + at_least_float32(output(m, rbf, tgt_local, part.num_local_atoms))
        return scatter_sum(atom_energy, batch.batch[part.atoms], batch.num_structures), None
