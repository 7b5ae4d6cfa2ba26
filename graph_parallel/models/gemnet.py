"""GemNet-T and GemNet-dT (Gasteiger, Becker, Guennemann, 2021) in graph-parallel form.

Edges c->a carry embeddings m_ca; a triplet pairs two edges into the same atom a (b->a feeds c->a)
with the angle at a, so every triplet of a rank's edges is local. Communication per interaction
block: one all-gather of the edge update ``x_ac`` (read at each edge's reverse, "id_swap") and one
all-gather of the atom embeddings h (read at each edge's source). GemNet-T takes forces as -dE/dx,
GemNet-dT predicts them directly from per-edge scalars times edge directions.

Efficient bilinear layer: the radial part of the circular basis depends only on the output edge
c->a, so sum_b Y(angle_cab) x_ba is formed first (a padded [E, S, K] x [E, K, C] batched matmul)
and projected afterwards, instead of materialising a [triplets, S * R] basis.

Initialisation: He-orthogonal for every dense layer, both [a, b, out] weights and the output heads
(``weight_init="he_orthogonal"``, as GemNet and fairchem; ScaledSiLU's 1/0.6 assumes that
variance), atom embeddings uniform in +-sqrt(3). ``weight_init="torch"`` keeps PyTorch's defaults.

Scaling factors: ``ScaleFactor`` buffers (1.0 until fitted) rescale sums so activations keep unit
variance; :func:`fit_scale_factors` fits them one after another on a few batches, as GemNet does,
and :func:`load_scale_file` loads a published fairchem scale file instead. Either way they are
buffers, so they travel in the state_dict.

fairchem compatibility options (defaults keep this project's behaviour): ``force_mlp_dense``
(GemNet-dT's force MLP starts with a dense layer before its residual layers, as fairchem's),
``symmetric_edges="one_sided"`` (fairchem's edge selection; see models.common.model_graph) and
``num_elements=83`` (fairchem's embedding rows).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterable, Optional, Union

import torch
from torch import Tensor, nn

from runtime.errors import ConfigError, DataError, MissingFileError
from runtime.graph import scatter_sum
from runtime.io import atomic_write

from graph_parallel.data.batch import S2EFBatch
from graph_parallel.parallel import GraphPartition, gather
from graph_parallel.models.basis import GaussianBasis, real_sph_harm_m0
from graph_parallel.models.common import FusedSiLU, at_least_float32, he_orthogonal_, pair_linear

INV_SQRT2 = 1 / math.sqrt(2.0)


@dataclass
class GemNetConfig:
    num_spherical: int = 7
    num_radial: int = 128
    num_blocks: int = 3
    emb_size_atom: int = 512
    emb_size_edge: int = 512
    emb_size_trip: int = 64
    emb_size_rbf: int = 16
    emb_size_cbf: int = 16
    emb_size_bil_trip: int = 64
    num_before_skip: int = 1
    num_after_skip: int = 2
    num_concat: int = 1
    num_atom: int = 3
    cutoff: float = 6.0
    envelope_exponent: int = 5
    direct_forces: bool = False
    num_elements: int = 100
    weight_init: str = "he_orthogonal"     # or "torch": PyTorch's defaults (variance 1/3 of He's)
    force_mlp_dense: bool = False          # dT force MLP = dense + residual layers (fairchem), not residuals only
    symmetric_edges: str = "union"         # or "one_sided": fairchem's edge selection (models.common.model_graph)

    def __post_init__(self):
        choices = {"weight_init": ("he_orthogonal", "torch"), "symmetric_edges": ("union", "one_sided")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"GemNet {name} must be one of {allowed}, got {getattr(self, name)!r}")


PRESETS = {
    # tiny: tests and CPU quick starts (not a published configuration)
    "small": GemNetConfig(num_radial=16, num_blocks=2, emb_size_atom=32, emb_size_edge=32, emb_size_trip=16,
                          emb_size_rbf=8, emb_size_cbf=8, emb_size_bil_trip=16, num_atom=2),
    "base": GemNetConfig(),                                                  # OC20 GemNet-T / GemNet-dT
    "xl": GemNetConfig(num_blocks=6, emb_size_atom=128, emb_size_edge=1536, emb_size_trip=384,
                       emb_size_bil_trip=192),                               # GemNet-XL (Sriram et al.)
}


SILU_SCALE = 1 / 0.6


class ScaledSiLU(FusedSiLU):
    """silu(x) / 0.6 with fused first and second derivatives (92 activations on [E, 512] per step)."""

    def __init__(self):
        super().__init__(SILU_SCALE)


class Dense(nn.Module):
    def __init__(self, n_in: int, n_out: int, bias: bool = False, act: bool = True):
        super().__init__()
        self.linear = nn.Linear(n_in, n_out, bias=bias)
        self.act = ScaledSiLU() if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.linear(x))


class Residual(nn.Module):
    def __init__(self, units: int, layers: int = 2):
        super().__init__()
        self.mlp = nn.Sequential(*(Dense(units, units) for _ in range(layers)))

    def forward(self, x: Tensor) -> Tensor:
        return (x + self.mlp(x)) * INV_SQRT2


class ScaleFactor(nn.Module):
    """y * scale; while fitting, accumulates mean squares of y (and of the reference x, if given)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.tensor(1.0))
        self.fitting = False
        self._sums = None

    def forward(self, y: Tensor, ref: Optional[Tensor] = None) -> Tensor:
        if self.fitting:
            target = (ref.detach().double() ** 2).mean() if ref is not None else y.new_tensor(1.0).double()
            stats = torch.stack([target, (y.detach().double() ** 2).mean()])
            self._sums = stats if self._sums is None else self._sums + stats
        return y * self.scale

    def start_fit(self) -> None:
        self.fitting, self._sums = True, None

    def finish_fit(self) -> float:
        self.fitting = False
        if self._sums is not None and self._sums[1] > 0:
            self.scale.fill_(float(torch.sqrt(self._sums[0] / self._sums[1])))
        return float(self.scale)


class EdgeEmbedding(nn.Module):
    """m_ca = act(W [h_c, h_a, e_ca]): source and target atom embeddings with an edge feature."""

    def __init__(self, atom: int, edge_in: int, out: int):
        super().__init__()
        self.dense = Dense(2 * atom + edge_in, out)

    def forward(self, h: Tensor, e: Tensor, src: Tensor, tgt: Tensor) -> Tensor:
        return self.dense.act(pair_linear(h, src, tgt, e, self.dense.linear))     # atoms projected, then gathered


class AtomUpdate(nn.Module):
    """h_a <- MLP(scale * sum_c m_ca * W rbf_ca), the sum over this rank's edges into its atoms."""

    def __init__(self, cfg: GemNetConfig, layers: int):
        super().__init__()
        self.dense_rbf = Dense(cfg.emb_size_rbf, cfg.emb_size_edge, act=False)
        self.scale_sum = ScaleFactor()
        self.layers = nn.Sequential(Dense(cfg.emb_size_edge, cfg.emb_size_atom),
                                    *(Residual(cfg.emb_size_atom) for _ in range(layers)))

    def forward(self, m: Tensor, rbf: Tensor, tgt_local: Tensor, num_atoms: int) -> Tensor:
        x = scatter_sum(m * self.dense_rbf(rbf), tgt_local, num_atoms)
        return self.layers(self.scale_sum(x, m))


class OutputBlock(AtomUpdate):
    def __init__(self, cfg: GemNetConfig):
        super().__init__(cfg, cfg.num_atom)
        self.out_energy = nn.Linear(cfg.emb_size_atom, 1, bias=False)
        self.direct = cfg.direct_forces
        if self.direct:
            first = [Dense(cfg.emb_size_edge, cfg.emb_size_edge)] if cfg.force_mlp_dense else []
            self.seq_forces = nn.Sequential(*first, *(Residual(cfg.emb_size_edge) for _ in range(cfg.num_atom)))
            self.dense_rbf_f = Dense(cfg.emb_size_rbf, cfg.emb_size_edge, act=False)
            self.scale_rbf_f = ScaleFactor()
            self.out_forces = nn.Linear(cfg.emb_size_edge, 1, bias=False)

    def forward(self, m, rbf, tgt_local, num_atoms):
        energy = self.out_energy(super().forward(m, rbf, tgt_local, num_atoms)).squeeze(-1)     # [A_local]
        if not self.direct:
            return energy, None
        x = self.seq_forces(m)
        x = self.scale_rbf_f(x * self.dense_rbf_f(rbf), x)
        return energy, self.out_forces(x).squeeze(-1)                                           # [E_local]


class EfficientBilinear(nn.Module):
    """sum_b [W_rbf(d_ca) . Y(angle_cab)] x_ba, projected with a bilinear weight [cbf, trip, out]."""

    def __init__(self, cfg: GemNetConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cfg.emb_size_cbf, cfg.emb_size_trip, cfg.emb_size_bil_trip))
        nn.init.normal_(self.weight, std=1 / math.sqrt(cfg.emb_size_cbf * cfg.emb_size_trip))

    def forward(self, rbf_w: Tensor, sph: Tensor, x_ba: Tensor, id_ca: Tensor, ragged: Tensor, kmax: int):
        """rbf_w [E, cbf, S], sph [E, S, K] (padded), x_ba [T, trip] -> [E, out]."""
        padded = x_ba.new_zeros(rbf_w.shape[0], kmax, x_ba.shape[1])
        padded = padded.index_put((id_ca, ragged), x_ba)
        sum_k = torch.bmm(sph, padded)                       # [E, S, trip]
        rbf_sum = torch.bmm(rbf_w, sum_k)                    # [E, cbf, trip]
        return torch.einsum("eij,ijo->eo", rbf_sum, self.weight)


class TripletInteraction(nn.Module):
    def __init__(self, cfg: GemNetConfig):
        super().__init__()
        e, t = cfg.emb_size_edge, cfg.emb_size_trip
        self.dense_ba = Dense(e, e)
        self.mlp_rbf = Dense(cfg.emb_size_rbf, e, act=False)
        self.scale_rbf = ScaleFactor()
        self.down_projection = Dense(e, t)
        self.bilinear = EfficientBilinear(cfg)
        self.scale_cbf_sum = ScaleFactor()
        self.up_projection_ca = Dense(cfg.emb_size_bil_trip, e)
        self.up_projection_ac = Dense(cfg.emb_size_bil_trip, e)

    def forward(self, m, rbf3, rbf_w, sph, part: GraphPartition, kmax: int, group):
        x_ba = self.dense_ba(m)
        x_ba = self.scale_rbf(x_ba * self.mlp_rbf(rbf3), x_ba)
        x_ba = self.down_projection(x_ba).index_select(0, part.id3_ba_local)                       # [T_local, trip]
        x = self.bilinear(rbf_w, sph, x_ba, part.id3_ca_local, part.id3_ragged, kmax)
        x = self.scale_cbf_sum(x, x_ba)
        x_ca = self.up_projection_ca(x)
        x_ac = gather(self.up_projection_ac(x), part.edge_sizes, group).index_select(0, part.id_swap)   # reverse edges
        return (x_ca + x_ac) * INV_SQRT2


class InteractionBlock(nn.Module):
    def __init__(self, cfg: GemNetConfig):
        super().__init__()
        e = cfg.emb_size_edge
        self.dense_ca = Dense(e, e)
        self.triplet = TripletInteraction(cfg)
        self.before_skip = nn.Sequential(*(Residual(e) for _ in range(cfg.num_before_skip)))
        self.after_skip = nn.Sequential(*(Residual(e) for _ in range(cfg.num_after_skip)))
        self.atom_update = AtomUpdate(cfg, cfg.num_atom)
        self.concat = EdgeEmbedding(cfg.emb_size_atom, e, e)
        self.residual_m = nn.Sequential(*(Residual(e) for _ in range(cfg.num_concat)))

    def forward(self, h_local, m, rbf3, rbf_w, sph, rbf_h, src, tgt, part, kmax, group):
        x = (self.dense_ca(m) + self.triplet(m, rbf3, rbf_w, sph, part, kmax, group)) * INV_SQRT2
        m = (m + self.before_skip(x)) * INV_SQRT2
        m = self.after_skip(m)
        h_local = (h_local + self.atom_update(m, rbf_h, tgt - part.atom_start, part.num_local_atoms)) * INV_SQRT2
        h = gather(h_local, part.atom_sizes, group)                                  # sources live anywhere
        m = (m + self.residual_m(self.concat(h, m, src, tgt))) * INV_SQRT2
        return h_local, m


class GemNetT(nn.Module):
    """GemNet-T (conservative forces) or, with ``direct_forces``, GemNet-dT."""

    triplet_kind = "shared_target"
    symmetric_graph = True

    def __init__(self, cfg: GemNetConfig = GemNetConfig()):
        super().__init__()
        self.cfg = cfg
        self.direct_forces = cfg.direct_forces
        self.radial = GaussianBasis(cfg.num_radial, cfg.cutoff, cfg.envelope_exponent)
        self.radial_cbf = GaussianBasis(cfg.num_radial, cfg.cutoff, cfg.envelope_exponent)
        self.mlp_rbf3 = Dense(cfg.num_radial, cfg.emb_size_rbf, act=False)
        # efficient down projection of the circular basis' radial part: [S, R, cbf]
        self.mlp_cbf3 = nn.Parameter(torch.empty(cfg.num_spherical, cfg.num_radial, cfg.emb_size_cbf))
        nn.init.normal_(self.mlp_cbf3, std=1 / math.sqrt(cfg.num_radial))
        self.mlp_rbf_h = Dense(cfg.num_radial, cfg.emb_size_rbf, act=False)
        self.mlp_rbf_out = Dense(cfg.num_radial, cfg.emb_size_rbf, act=False)
        self.atom_emb = nn.Embedding(cfg.num_elements, cfg.emb_size_atom)
        nn.init.uniform_(self.atom_emb.weight, -math.sqrt(3), math.sqrt(3))
        self.edge_emb = EdgeEmbedding(cfg.emb_size_atom, cfg.num_radial, cfg.emb_size_edge)
        self.interactions = nn.ModuleList(InteractionBlock(cfg) for _ in range(cfg.num_blocks))
        self.outputs = nn.ModuleList(OutputBlock(cfg) for _ in range(cfg.num_blocks + 1))
        if cfg.weight_init == "he_orthogonal":
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """He-orthogonal weights for every dense layer, the output heads, the basis down-projection
        [S, R, cbf] and the bilinear weights; atom embeddings uniform in +-sqrt(3) (as fairchem)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                he_orthogonal_(module.weight)
            elif isinstance(module, EfficientBilinear):
                # fairchem's layout [trip, cbf, out] (orthogonal along trip), stored here as [cbf, trip, out]
                w = module.weight.new_empty(module.weight.shape[1], module.weight.shape[0], module.weight.shape[2])
                module.weight.copy_(he_orthogonal_(w, (0, 1)).permute(1, 0, 2))
        he_orthogonal_(self.mlp_cbf3, (0, 1))
        nn.init.uniform_(self.atom_emb.weight, -math.sqrt(3), math.sqrt(3))

    def config_dict(self) -> dict:
        return asdict(self.cfg)

    def forward(self, pos: Tensor, batch: S2EFBatch, part: GraphPartition, group=None):
        """Per-structure energy over this rank's atoms [B], and direct forces on its atoms [A_local, 3]."""
        if part.id_swap is None:
            raise ValueError("GemNet needs a partition with triplets='shared_target' (and a symmetric graph)")
        local = part.edges
        src, tgt = batch.edge_index[:, local]
        tgt_local = tgt - part.atom_start
        vec = pos.index_select(0, src) - pos.index_select(0, tgt)
        shift = torch.einsum("ei,eij->ej", batch.cell_offsets[local].to(pos.dtype),
                             batch.cell.to(pos.dtype).index_select(0, batch.batch[tgt]))
        vec = vec + shift                                                  # from target a to source c
        dist = vec.norm(dim=-1)
        rbf = self.radial(dist)                                            # [E_local, R]
        # circular basis: angle at a between a->b and a->c; radial part on c->a (efficient form)
        unit = vec / dist.unsqueeze(-1)
        cos = (unit.index_select(0, part.id3_ba_local) * unit.index_select(0, part.id3_ca_local)).sum(-1)
        sph_t = real_sph_harm_m0(cos, self.cfg.num_spherical)              # [T_local, S]
        kmax = part.kmax                                                   # computed on the CPU by partition_graph
        sph = sph_t.new_zeros(part.num_local_edges, kmax, self.cfg.num_spherical)
        sph = sph.index_put((part.id3_ca_local, part.id3_ragged), sph_t).transpose(1, 2)   # [E, S, K]
        rbf_w = torch.einsum("er,srk->eks", self.radial_cbf(dist), self.mlp_cbf3)          # [E, cbf, S]
        rbf3, rbf_h, rbf_out = self.mlp_rbf3(rbf), self.mlp_rbf_h(rbf), self.mlp_rbf_out(rbf)

        h = self.atom_emb(batch.atomic_numbers - 1)                        # all atoms (replicated)
        m = self.edge_emb(h, rbf, src, tgt)
        h_local = h[part.atoms]
        # energies and direct forces accumulate in float32 under autocast (blocks, atoms, the gp all-reduce)
        atom_energy, edge_force = self.outputs[0](m, rbf_out, tgt_local, part.num_local_atoms)
        atom_energy = at_least_float32(atom_energy)
        edge_force = at_least_float32(edge_force) if edge_force is not None else None
        for block, output in zip(self.interactions, self.outputs[1:]):
            h_local, m = block(h_local, m, rbf3, rbf_w, sph, rbf_h, src, tgt, part, kmax, group)
            e, f = output(m, rbf_out, tgt_local, part.num_local_atoms)
            atom_energy = atom_energy + at_least_float32(e)
            edge_force = edge_force + at_least_float32(f) if f is not None else None
        energy = scatter_sum(atom_energy, batch.batch[part.atoms], batch.num_structures)
        if not self.direct_forces:
            return energy, None
        forces = scatter_sum(edge_force.unsqueeze(-1) * at_least_float32(unit), tgt_local, part.num_local_atoms)
        return energy, forces


def fit_scale_factors(model: GemNetT, batches: Iterable[S2EFBatch]) -> list:
    """Fit every ScaleFactor in order (earlier ones fixed) on whole graphs; returns the scales.

    Each batch carries its one-rank partition (``batch.part``, on the batch's device, as collated by
    ``Collater(..., gp_rank=0, gp_size=1, triplets=model.triplet_kind)``). Runs without communication
    on the full graph, so every rank would compute the same factors.
    """
    batches = list(batches)
    for b in batches:
        if b.part is None or b.part.size != 1:
            raise ValueError("fit_scale_factors needs whole-graph batches carrying a one-rank partition "
                             "(Collater with gp_size=1 and triplets=model.triplet_kind)")
    scales = []
    with torch.no_grad():
        for factor in [m for m in model.modules() if isinstance(m, ScaleFactor)]:
            factor.start_fit()
            for b in batches:
                model(b.pos, b, b.part, None)
            scales.append(factor.finish_fit())
    return scales


def scale_factor_names(num_blocks: int, direct_forces: bool) -> list:
    """fairchem's names of a GemNet's scaling factors, in its file order.

    TripInteraction_{i}_had_rbf / _sum_cbf and AtomUpdate_{i}_sum for interaction block i = 1..n,
    then OutBlock_{i}_sum (and OutBlock_{i}_had for direct forces) for output block i = 0..n.
    """
    names = []
    for i in range(1, num_blocks + 1):
        names += [f"TripInteraction_{i}_had_rbf", f"TripInteraction_{i}_sum_cbf", f"AtomUpdate_{i}_sum"]
    for i in range(num_blocks + 1):
        names += [f"OutBlock_{i}_sum"] + ([f"OutBlock_{i}_had"] if direct_forces else [])
    return names


def scale_factors_by_name(model: GemNetT) -> Dict[str, ScaleFactor]:
    """fairchem's name of every scaling factor -> its ScaleFactor here (:func:`scale_factor_names` order)."""
    factors = []
    for block in model.interactions:
        factors += [block.triplet.scale_rbf, block.triplet.scale_cbf_sum, block.atom_update.scale_sum]
    for out in model.outputs:
        factors += [out.scale_sum] + ([out.scale_rbf_f] if out.direct else [])
    return dict(zip(scale_factor_names(len(model.interactions), model.direct_forces), factors, strict=True))


def _gemnet_shape(direct_forces: bool, num_blocks: int) -> str:
    return f"GemNet-{'dT' if direct_forces else 'T'} with {num_blocks} block{'s' if num_blocks != 1 else ''}"


def scale_file_shape(names: Iterable[str]) -> str:
    """The GemNet whose scaling factors are exactly ``names`` (e.g. "GemNet-dT with 4 blocks"), or why none is."""
    names = set(names)
    blocks = max((int(n.split("_")[1]) for n in names if n.startswith(("TripInteraction_", "AtomUpdate_"))
                  and n.split("_")[1].isdigit()), default=0)
    for direct in (False, True):
        if blocks and names == set(scale_factor_names(blocks, direct)):
            return f"{_gemnet_shape(direct, blocks)} (num_blocks {blocks})"
    return "no GemNet-T or GemNet-dT: its names are not the factors of any number of blocks"


def load_scale_file(model: GemNetT, path: Union[str, Path]) -> Dict[str, float]:
    """Set the scaling factors from a fairchem scale file (JSON: name -> float); returns what was set.

    Format: ``{"comment": "...", "TripInteraction_1_had_rbf": 15.2, ...}`` (the "comment" key,
    which older files have, is ignored; files that name the atom update ``IntBlock_{i}_sum`` are
    read as ``AtomUpdate_{i}_sum``). Every factor of the model must be named and every name must
    be a factor of the model, else :class:`DataError` lists the differences and names the GemNet
    the file fits (:func:`scale_file_shape`). A value of 0 means "not fitted" to fairchem (no
    scaling) and is set to 1 here.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"scale file not found: {path}")
    if path.suffix != ".json":
        raise DataError(f"scale file {path}: only fairchem's JSON scale files are read (name -> float)")
    try:
        values = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(f"scale file {path} is not valid JSON ({err})") from None
    if not isinstance(values, dict):
        raise DataError(f"scale file {path} must hold a JSON object of scale-factor names -> numbers")
    values = {k: v for k, v in values.items() if k != "comment"}
    for name in [k for k in values if k.startswith("IntBlock_") and k.endswith("_sum")]:
        alias = "AtomUpdate_" + name[len("IntBlock_"):]
        if alias not in values:
            values[alias] = values.pop(name)
    bad = [k for k, v in values.items()
           if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0]
    if bad:
        raise DataError(f"scale file {path}: values of {bad} are not finite non-negative numbers")
    factors = scale_factors_by_name(model)
    unknown, missing = sorted(set(values) - set(factors)), [k for k in factors if k not in values]
    if unknown or missing:
        ours = _gemnet_shape(model.direct_forces, len(model.interactions))
        raise DataError(f"scale file {path} does not match this {ours}: unknown names {unknown}, missing names "
                        f"{missing}; the file fits {scale_file_shape(values)}")
    applied = {}
    for name, factor in factors.items():
        value = float(values[name]) or 1.0
        factor.scale.fill_(value)
        applied[name] = value
    return applied


def save_scale_file(model: GemNetT, path: Union[str, Path], comment: str = "") -> None:
    """Write the model's scaling factors as a fairchem scale file (atomically)."""
    data = {"comment": comment, **{k: float(f.scale) for k, f in scale_factors_by_name(model).items()}}
    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=4)
        f.write("\n")
