"""Pieces shared by the graph-parallel models: edge geometry, a twice-differentiable fused SiLU,
parallel linears as one GEMM, residual layer, He-orthogonal initialisation, the radius graph each
model expects, energy + forces."""
from __future__ import annotations

import contextlib
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from graph_parallel.data.batch import S2EFBatch
from graph_parallel.data.radius_graph import structure_graph
from graph_parallel.parallel import GraphPartition, all_reduce, gather


def edge_vectors(pos: Tensor, batch: S2EFBatch, edges=None) -> Tuple[Tensor, Tensor]:
    """Vector from target to (imaged) source and its length for ``edges`` (index or slice; default all), [E, 3], [E]."""
    edge_index, offsets = batch.edge_index, batch.cell_offsets
    if edges is not None:
        edge_index, offsets = edge_index[:, edges], offsets[edges]
    src, tgt = edge_index
    cell = batch.cell.to(pos.dtype).index_select(0, batch.batch[tgt])     # [E, 3, 3]
    shift = torch.einsum("ei,eij->ej", offsets.to(pos.dtype), cell)
    # index_select, not pos[src]: its backward (index_add_) is deterministic on multi-threaded CPU
    vec = pos.index_select(0, src) + shift - pos.index_select(0, tgt)
    return vec, vec.norm(dim=-1)


def triplet_cosines(vec_ji: Tensor, dist_ji: Tensor, vec_kj: Tensor, dist_kj: Tensor, id_ji: Tensor,
                    id_kj: Tensor) -> Tensor:
    """Cosine of the angle at j between j->i and j->k for triplets (k->j = ``vec_kj[id_kj]``, j->i = ``vec_ji[id_ji]``)."""
    to_i = -vec_ji.index_select(0, id_ji)    # vec[ji] points from i to j
    to_k = vec_kj.index_select(0, id_kj)     # vec[kj] points from j to k
    return (to_i * to_k).sum(-1) / (dist_ji.index_select(0, id_ji) * dist_kj.index_select(0, id_kj))


class _SiLUFn(torch.autograd.Function):
    """y = scale * silu(x), twice differentiable for conservative forces trained by a loss on them.

    Autograd's own twice-differentiable silu records ~6 elementwise ops per activation, whose
    derivatives are again several each. Here a training step with forces evaluates the sigmoid
    twice per activation, the least it can (on this project's CPUs one sigmoid costs about three
    multiplies; the fused ``silu_backward`` as much as a sigmoid):

    ============================  ==========================================================
    pass                          work per activation
    ============================  ==========================================================
    forward                       ``silu`` (sigmoid 1)
    backward, no ``create_graph`` ``silu_backward`` (sigmoid 2): inference forces, direct-force training
    backward, ``create_graph``    :class:`_SiLUGradFn`: sigmoid 2, then f'(x) and grad * f''(x)
                                  (9 elementwise ops); ``x`` is released, f'(x) kept instead
    the training loss' backward   three multiplies with the kept tensors, no sigmoid
    ============================  ==========================================================

    The create_graph graph keeps two [N, C] tensors per activation, f'(x) and grad * f''(x), where
    autograd's keeps x and grad: the same memory. A second ``create_graph`` backward through one
    forward raises (x is gone); a third derivative raises as well."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.x, ctx.scale, ctx.slope = x, scale, None      # x on ctx, not saved: released after create_graph
        y = torch.nn.functional.silu(x)
        return y.mul_(scale) if scale != 1.0 else y

    @staticmethod
    def backward(ctx, grad):
        if ctx.slope is not None:                         # after the create_graph pass: f'(x) kept, x gone
            if torch.is_grad_enabled():
                raise RuntimeError("FusedSiLU: a second create_graph backward through one forward is not "
                                   "supported; run the forward again")
            return grad * ctx.slope, None
        if not torch.is_grad_enabled():
            return _silu_grad(grad, ctx.x, ctx.scale), None
        return _SiLUGradFn.apply(grad, ctx.x, ctx), None


class _SiLUGradFn(torch.autograd.Function):
    """(grad, x) -> grad * f'(x) for f = scale * silu, with s = sigmoid(x) and q = s (1 - s):
    f'(x) = scale (s + x q), f''(x) = scale (2 q + x q (1 - 2 s)). Keeps f'(x) (also handed to the
    forward's node, which then drops x) and grad * f''(x); its own backward is two multiplies."""

    @staticmethod
    def forward(ctx, grad, x, silu_ctx):
        scale = silu_ctx.scale
        s = torch.sigmoid(x)
        q = torch.addcmul(s, s, s, value=-1.0)
        xq = x * q
        slope = torch.add(s, xq)
        if scale != 1.0:
            slope.mul_(scale)
        curve = None
        if ctx.needs_input_grad[1]:     # grad * f''(x) = 2 scale grad (q + xq / 2 - xq s)
            curve = torch.add(q, xq, alpha=0.5).addcmul_(xq, s, value=-1.0).mul_(grad).mul_(2.0 * scale)
        silu_ctx.slope, silu_ctx.x = slope, None
        ctx.slope, ctx.curve = slope, curve
        return grad * slope

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gg):
        d_grad = gg * ctx.slope if ctx.needs_input_grad[0] else None
        d_x = gg * ctx.curve if ctx.needs_input_grad[1] else None
        return d_grad, d_x, None


def _silu_grad(grad: Tensor, x: Tensor, scale: float) -> Tensor:
    out = torch.ops.aten.silu_backward(grad, x)
    return out.mul_(scale) if scale != 1.0 else out


class FusedSiLU(nn.Module):
    """``scale * silu(x)`` with fused first and second derivatives (see :class:`_SiLUFn`)."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return _SiLUFn.apply(x, self.scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}"


def parallel_linear(x: Tensor, *linears: nn.Linear, act: Optional[nn.Module] = None) -> Tuple[Tensor, ...]:
    """``tuple(act(lin(x)) for lin in linears)`` as one GEMM over the concatenated weights (and one
    elementwise ``act``, if given, over the concatenated output).

    One [N, in] x [in, sum out] product reads ``x`` once and, in the backward passes, gives the
    input gradient as one product with K = sum out instead of one per layer plus their sum. The
    parameters stay separate (state_dict keys unchanged); the outputs are column views of one tensor.
    """
    biases = [lin.bias for lin in linears]
    if any(b is None for b in biases) and not all(b is None for b in biases):
        raise ValueError("parallel_linear needs all linears with a bias or all without")
    weight = torch.cat([lin.weight for lin in linears])
    bias = None if biases[0] is None else torch.cat(biases)
    y = torch.nn.functional.linear(x, weight, bias)
    return (act(y) if act is not None else y).split([lin.out_features for lin in linears], dim=-1)


def pair_linear(h: Tensor, first: Tensor, second: Tensor, e: Tensor, linear: nn.Linear) -> Tensor:
    """``linear(cat([h[first], h[second], e], -1))`` for per-edge rows, with the atom parts projected
    per atom and then gathered: (h W_1)[first] + (h W_2)[second] + e W_e. ``h`` has far fewer rows
    (atoms) than ``first``/``second`` (edges), so this saves 2/3 of the edge-wide product of a
    [2 atom + edge_in]-wide layer, in every pass; the weight stays one matrix (split here)."""
    a = h.shape[1]
    w_1, w_2, w_e = linear.weight.split([a, a, e.shape[1]], dim=1)        # backward: one cat
    h_1, h_2 = torch.nn.functional.linear(h, torch.cat([w_1, w_2])).split(linear.out_features, dim=1)
    x = torch.addmm(h_1.index_select(0, first) + h_2.index_select(0, second), e, w_e.t())
    return x + linear.bias if linear.bias is not None else x


class ResidualLayer(nn.Module):
    def __init__(self, dim: int, act: nn.Module):
        super().__init__()
        self.lin1, self.lin2, self.act = nn.Linear(dim, dim), nn.Linear(dim, dim), act

    def forward(self, x: Tensor) -> Tensor:
        return x + self.act(self.lin2(self.act(self.lin1(x))))


@torch.no_grad()
def he_orthogonal_(weight: Tensor, fan_in_dims: Sequence[int] = (1,)) -> Tensor:
    """He-orthogonal initialisation (GemNet; fairchem's ``he_orthogonal_init``), in place.

    A random (semi-)orthogonal matrix (``torch.nn.init.orthogonal_``, rows = ``weight.shape[0]``),
    then every output unit -- each slice along the dimensions not in ``fan_in_dims`` -- is
    standardised to mean 0 and (unbiased) variance 1 / fan_in, fan_in = the product of the sizes of
    ``fan_in_dims``. For an ``nn.Linear`` weight [out, in] the fan-in dimension is 1; for a
    [a, b, out] tensor (GemNet's bilinear and basis down-projection) it is (0, 1). PyTorch's
    default ``nn.Linear`` initialisation has variance 1 / (3 fan_in).
    """
    nn.init.orthogonal_(weight)
    dims = tuple(fan_in_dims)
    fan_in = 1
    for d in dims:
        fan_in *= weight.shape[d]
    var, mean = torch.var_mean(weight, dim=dims, unbiased=True, keepdim=True)
    weight.copy_((weight - mean) / torch.sqrt(var + 1e-6) / fan_in ** 0.5)
    return weight


def at_least_float32(x: Tensor) -> Tensor:
    """``x`` in float32 if it is fp16/bf16 (autocast), else as it is: float64 models stay float64."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def edge_kind(model: nn.Module) -> str:
    """The radius graph ``model`` expects (see :data:`graph_parallel.data.radius_graph.EDGE_KINDS`):
    "directed" for DimeNet++; for GemNet its ``symmetric_edges`` option, "union" or "one_sided"."""
    return edge_kind_of(type(model), getattr(model, "cfg", None))


def edge_kind_of(model_class: type, cfg) -> str:
    """:func:`edge_kind` of a model of class ``model_class`` with config ``cfg``, without building it."""
    if not model_class.symmetric_graph:
        return "directed"
    return getattr(cfg, "symmetric_edges", "union")


def model_graph(model: nn.Module, pos: Tensor, cell: Tensor, cutoff: float, max_neighbors: int,
                pbc: Sequence[bool] = (True, True, True)) -> Tuple[Tensor, Tensor]:
    """The radius graph of one structure as ``model`` expects it: ``(edge_index, cell_offsets)``
    (:func:`graph_parallel.data.radius_graph.structure_graph` of kind :func:`edge_kind`)."""
    return structure_graph(pos, cell, cutoff, max_neighbors, edge_kind(model), pbc=pbc)


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
