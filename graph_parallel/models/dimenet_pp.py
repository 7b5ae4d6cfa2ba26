"""DimeNet++ (Gasteiger et al., 2020) in graph-parallel form.

Messages live on directed edges j->i. A rank owns the edges whose target atom it holds and the
triplets k->j->i of those edges. Per interaction block the only communication is one all-gather of
the down-projected edge messages (``int_emb_size`` wide, the narrowest tensor of the block), which
each triplet reads at its incoming edge k->j; the reduce-scatter in its backward pass brings the
other ranks' gradient contributions home. Output blocks sum edges into their (local) target atoms.

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

from ..data.batch import S2EFBatch
from ..parallel import GraphPartition, gather
from .basis import BesselBasis, SphericalBasis
from .common import ResidualLayer, edge_vectors, triplet_cosines


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
        h = self.emb(z - 1)
        return self.act(self.lin(torch.cat([h[tgt], h[src], self.act(self.lin_rbf(rbf))], dim=-1)))


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

    def forward(self, m: Tensor, rbf: Tensor, sbf: Tensor, part: GraphPartition, group) -> Tensor:
        x_ji = self.act(self.lin_ji(m))
        x_kj = self.act(self.lin_kj(m)) * self.lin_rbf2(self.lin_rbf1(rbf))
        x_kj = self.act(self.lin_down(x_kj))                                # [E_local, int_emb]
        x_kj = gather(x_kj, part.edge_sizes, group)                          # [E, int_emb]: all edges
        x_kj = x_kj[part.id_kj] * self.lin_sbf2(self.lin_sbf1(sbf))          # [T_local, int_emb]
        x_kj = scatter_sum(x_kj, part.id_ji_local, part.num_local_edges)
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
        act = nn.SiLU()
        self.rbf = BesselBasis(cfg.num_radial, cfg.cutoff, cfg.envelope_exponent)
        self.sbf = SphericalBasis(cfg.num_spherical, cfg.num_radial, cfg.cutoff, cfg.envelope_exponent)
        self.embedding = EmbeddingBlock(cfg, act)
        self.interactions = nn.ModuleList(InteractionPPBlock(cfg, act) for _ in range(cfg.num_blocks))
        self.outputs = nn.ModuleList(OutputPPBlock(cfg, act) for _ in range(cfg.num_blocks + 1))

    def config_dict(self) -> dict:
        return asdict(self.cfg)

    def forward(self, pos: Tensor, batch: S2EFBatch, part: GraphPartition, group=None):
        """Per-structure energy summed over this rank's atoms, [B]; no direct forces."""
        vec, dist = edge_vectors(pos, batch)
        local = part.edges
        src, tgt = batch.edge_index[:, local]
        rbf = self.rbf(dist[local])                                           # [E_local, R]
        # radial part per edge (all edges: far fewer than triplets), then read at each triplet's k->j
        cos = triplet_cosines(vec.detach(), dist.detach(), part) if self.cfg.detach_angles else \
            triplet_cosines(vec, dist, part)
        sbf = self.sbf(self.sbf.radial(dist)[part.id_kj], cos)
        tgt_local = tgt - part.atom_start
        m = self.embedding(batch.atomic_numbers, rbf, src, tgt)
        atom_energy = self.outputs[0](m, rbf, tgt_local, part.num_local_atoms)
        for interaction, output in zip(self.interactions, self.outputs[1:]):
            m = interaction(m, rbf, sbf, part, group)
            atom_energy = atom_energy + output(m, rbf, tgt_local, part.num_local_atoms)
        return scatter_sum(atom_energy, batch.batch[part.atoms], batch.num_structures), None
