"""Equivariant kernel bases: spherical harmonics of relative positions x Clebsch-Gordan coefficients.

For an input degree ``l`` and output degree ``k`` the TFN kernel is a sum over frequencies
``J = |l - k| .. l + k`` of ``radial_J(|r|) * Q_J Y_J(r / |r|)``. ``compute_basis`` returns, per
pair ``(l, k)``, a tensor laid out ``[E, 2l+1, num_freq, 2k+1]`` so that a convolution is two
batched matmuls without any transpose copies. ``fuse_basis`` adds block-sparse concatenations of
those tensors used by the fused convolutions (per output degree, per input degree, fully fused).

Spherical harmonics use e3nn's "component" normalisation, so the ``(0, 0)`` basis is exactly 1 and
degree-0 -> degree-0 convolutions skip it.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Dict, List, Tuple, Union

import torch
from torch import Tensor

from runtime.compile import eager
from se3_transformer.model.fiber import degree_to_dim

BasisKey = Union[Tuple[int, int], str]
Basis = Dict[BasisKey, Tensor]


def num_frequencies(degree_in: int, degree_out: int) -> int:
    """Number of frequencies ``J`` coupling two degrees: ``2 min(l, k) + 1``."""
    return degree_to_dim(min(degree_in, degree_out))


@lru_cache(maxsize=None)
def clebsch_gordan(J: int, degree_in: int, degree_out: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Cached coupling tensor ``Q_J`` laid out ``[2k+1, 2l+1, 2J+1]`` (k = out, l = in)."""
    from e3nn import o3  # here, not at import: e3nn imports torch._dynamo (seconds before a bad flag is refused)

    return o3.wigner_3j(J, degree_in, degree_out, dtype=torch.float64, device=device).permute(2, 1, 0).to(dtype)


def spherical_harmonics(relative_pos: Tensor, max_J: int) -> List[Tensor]:
    """Real spherical harmonics ``Y_J`` of the edge directions for ``J = 0 .. max_J``: ``[E, 2J+1]`` each."""
    if relative_pos.dim() != 2 or relative_pos.shape[1] != 3:
        raise ValueError(f"relative positions must have shape [E, 3], got {tuple(relative_pos.shape)}")
    if relative_pos.numel() and relative_pos.device.type == "cpu":
        # Checked on CPU only, where it costs no device sync; the data pipeline checks every
        # molecule once when its file is read (QM9Arrays.check_values), so CUDA steps skip it.
        length = relative_pos.norm(dim=-1)
        if not torch.all(length > 0):
            if not torch.isfinite(relative_pos).all():
                raise ValueError("non-finite (NaN or infinite) atom coordinates: an edge has a non-finite "
                                 "relative position")
            raise ValueError("an edge joins two atoms at the same position (zero-length relative position)")
    from e3nn import o3  # see clebsch_gordan

    degrees = list(range(max_J + 1))
    sh = o3.spherical_harmonics(degrees, relative_pos, normalize=True, normalization="component")
    return list(torch.split(sh, [degree_to_dim(J) for J in degrees], dim=1))


def compute_basis(relative_pos: Tensor, max_degree: int, use_pad_trick: bool = False) -> Basis:
    """Basis ``{(l, k): [E, 2l+1, num_freq, 2k+1 (+1 if padded)]}`` for all ``l, k <= max_degree``.

    ``use_pad_trick`` pads the odd output axis by one zero column (even sizes suit tensor cores);
    convolutions slice the extra column off again.
    """
    sh = spherical_harmonics(relative_pos, 2 * max_degree)
    basis: Basis = {}
    for d_in in range(max_degree + 1):
        for d_out in range(max_degree + 1):
            per_freq = []
            for J in range(abs(d_in - d_out), d_in + d_out + 1):
                q = clebsch_gordan(J, d_in, d_out, relative_pos.dtype, relative_pos.device)
                per_freq.append(torch.einsum("nf,klf->nlk", sh[J], q))
            b = torch.stack(per_freq, dim=2)
            if use_pad_trick:
                b = torch.nn.functional.pad(b, (0, 1))
            basis[(d_in, d_out)] = b
    return basis


def basis_max_degree(basis: Basis) -> int:
    return max(k[0] for k in basis if isinstance(k, tuple))


@eager  # plain tensor bookkeeping; keeps torch.compile from tracing dict building
def fuse_basis(basis: Basis, fully_fused: bool = True, partially_fused: bool = True) -> Basis:
    """Return a copy of ``basis`` with the fused layouts added (only those asked for).

    - ``"out{k}"``: ``[E, sum_l (2l+1), sum_l F(l,k), 2k+1 (+pad)]``, input degrees concatenated;
    - ``"in{l}"``: ``[E, 2l+1, sum_k F(l,k), sum_k (2k+1)]``, output degrees concatenated;
    - ``"full"``: ``[E, sum_l (2l+1), sum_{k,l} F(l,k), sum_k (2k+1)]`` (output-degree-major blocks).
    Off-diagonal blocks are zero, so one matmul replaces a loop over degree pairs.
    """
    has_partial, has_full = "out0" in basis, "full" in basis
    if (has_partial or not (partially_fused or fully_fused)) and (has_full or not fully_fused):
        return basis
    basis = {k: v for k, v in basis.items() if isinstance(k, tuple)}
    max_degree = basis_max_degree(basis)
    degrees = range(max_degree + 1)
    sample = basis[(0, 0)]
    num_edges, dtype, device = sample.shape[0], sample.dtype, sample.device
    padded = sample.shape[-1] == 2
    sum_dim = sum(degree_to_dim(d) for d in degrees)
    fused: Basis = dict(basis)

    if not (partially_fused or fully_fused):
        return fused
    for d_out in degrees:  # the full layout is assembled from these
        sum_freq = sum(num_frequencies(d, d_out) for d in degrees)
        out = torch.zeros(num_edges, sum_dim, sum_freq, degree_to_dim(d_out) + int(padded), dtype=dtype, device=device)
        acc_d = acc_f = 0
        for d_in in degrees:
            dim, nf = degree_to_dim(d_in), num_frequencies(d_in, d_out)
            out[:, acc_d:acc_d + dim, acc_f:acc_f + nf, :] = basis[(d_in, d_out)]
            acc_d, acc_f = acc_d + dim, acc_f + nf
        fused[f"out{d_out}"] = out

    for d_in in degrees if partially_fused else ():
        sum_freq = sum(num_frequencies(d_in, d) for d in degrees)
        out = torch.zeros(num_edges, degree_to_dim(d_in), sum_freq, sum_dim, dtype=dtype, device=device)
        acc_d = acc_f = 0
        for d_out in degrees:
            dim, nf = degree_to_dim(d_out), num_frequencies(d_in, d_out)
            out[:, :, acc_f:acc_f + nf, acc_d:acc_d + dim] = basis[(d_in, d_out)][..., :dim]
            acc_d, acc_f = acc_d + dim, acc_f + nf
        fused[f"in{d_in}"] = out

    if fully_fused:
        sum_freq = sum(num_frequencies(l, k) for k in degrees for l in degrees)
        out = torch.zeros(num_edges, sum_dim, sum_freq, sum_dim, dtype=dtype, device=device)
        acc_d = acc_f = 0
        for d_out in degrees:
            block = fused[f"out{d_out}"]
            dim = degree_to_dim(d_out)
            out[:, :, acc_f:acc_f + block.shape[2], acc_d:acc_d + dim] = block[..., :dim]
            acc_d, acc_f = acc_d + dim, acc_f + block.shape[2]
        fused["full"] = out
    return fused


@eager  # plain tensor bookkeeping
def pair_basis(basis: Basis) -> Basis:
    """Add ``"pair{l}{k}"`` layouts for paired edges (edge ``e + E/2`` reverses edge ``e``).

    ``[E/2, 2 (2l+1), F * 2 (2k+1)]`` with rows ``(direction, m_in)`` and columns ``(f, direction,
    m_out)``, zero across directions: features of both directions laid side by side
    (``[E/2, C, 2 (2l+1)]``) times this give ``[E/2, C * F, 2 (2k+1)]``, the right operand of the
    shared kernel ``[E/2, C_out, C * F]``, with no transpose copy of the product.
    """
    out = dict(basis)
    for (l, k), b in [(key, v) for key, v in basis.items() if isinstance(key, tuple) and key != (0, 0)]:
        num_edges, d_in, nf, d_out = b.shape
        halves = b.view(2, num_edges // 2, d_in, nf, d_out)
        pair = b.new_zeros(num_edges // 2, 2, d_in, nf, 2, d_out)
        pair[:, 0, :, :, 0, :] = halves[0]
        pair[:, 1, :, :, 1, :] = halves[1]
        out[f"pair{l}{k}"] = pair.view(num_edges // 2, 2 * d_in, nf * 2 * d_out)
    return out


@eager  # e3nn's Clebsch-Gordan construction is Python-heavy; run it eagerly
def get_basis(relative_pos: Tensor, max_degree: int, use_pad_trick: bool = False, fully_fused: bool = True,
              partially_fused: bool = True) -> Basis:
    """Pairwise and requested fused bases for a batch of edges. No gradient flows into positions."""
    with torch.no_grad():
        return fuse_basis(compute_basis(relative_pos, max_degree, use_pad_trick), fully_fused, partially_fused)
