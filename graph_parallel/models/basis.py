"""Radial and angular bases of DimeNet/GemNet: polynomial envelope, radial Bessel and spherical bases.

The spherical Bessel functions j_l are evaluated from their closed forms
j_l(x) = sin(x) P_l(1/x) + cos(x) Q_l(1/x) (polynomial coefficients derived once with sympy), the
angular part is Y_l^0 = sqrt((2l+1)/4pi) P_l(cos angle) with the Legendre recurrence, so every
basis is a smooth function of distances and cosines (no atan2 or acos, whose gradients blow up for
collinear triplets, which crystals have plenty of).
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import List, Tuple

import numpy as np
import torch
from torch import Tensor, nn


class PolynomialEnvelope(nn.Module):
    """u(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2) for x < 1, else 0 (x = d / cutoff).

    DimeNet's ``envelope_exponent`` e means p = e + 1; GemNet's ``exponent`` is p itself.
    """

    def __init__(self, p: int = 6):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        p = self.p
        a, b, c = -(p + 1) * (p + 2) / 2, p * (p + 2), -p * (p + 1) / 2
        u = 1 + a * x ** p + b * x ** (p + 1) + c * x ** (p + 2)
        return torch.where(x < 1, u, torch.zeros_like(u))


class BesselBasis(nn.Module):
    """DimeNet radial basis sqrt(2/c) sin(n pi d/c) / d times the envelope, n = 1..num_radial."""

    def __init__(self, num_radial: int, cutoff: float, envelope_exponent: int = 5, learnable: bool = True):
        super().__init__()
        self.cutoff = cutoff
        self.envelope = PolynomialEnvelope(envelope_exponent + 1)
        freq = torch.arange(1, num_radial + 1, dtype=torch.get_default_dtype()) * math.pi
        self.freq = nn.Parameter(freq, requires_grad=learnable)

    def forward(self, dist: Tensor) -> Tensor:
        x = (dist / self.cutoff).unsqueeze(-1)
        norm = math.sqrt(2.0 / self.cutoff) / dist.unsqueeze(-1)
        return self.envelope(x) * norm * torch.sin(self.freq * x)


@lru_cache(maxsize=None)
def _spherical_bessel_polys(max_l: int) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Coefficients (in powers of u = 1/x) of P_l and Q_l with j_l(x) = sin x P_l(u) + cos x Q_l(u)."""
    import sympy

    x, u = sympy.symbols("x u", positive=True)
    out = []
    for l in range(max_l + 1):
        expr = sympy.expand(sympy.expand_func(sympy.jn(l, x)))
        sin_part = sympy.expand(expr.coeff(sympy.sin(x))).subs(x, 1 / u)
        cos_part = sympy.expand(expr.coeff(sympy.cos(x))).subs(x, 1 / u)
        coeffs = []
        for part in (sin_part, cos_part):
            poly = sympy.Poly(sympy.expand(part), u) if part != 0 else sympy.Poly(0, u)
            c = np.zeros(l + 2)
            for (power,), value in poly.terms():
                c[power] = float(value)
            coeffs.append(c)
        out.append(tuple(coeffs))
    return out


def spherical_bessel(l: int, x, max_l: int = None, polys=None):
    """j_l(x) for a tensor or numpy array x > 0 (``polys``: :func:`_spherical_bessel_polys` output, if at hand)."""
    p, q = (polys or _spherical_bessel_polys(max(l, max_l or 0)))[l]
    u = 1.0 / x
    sin, cos = (torch.sin, torch.cos) if isinstance(x, Tensor) else (np.sin, np.cos)
    ps = sum(float(c) * u ** k for k, c in enumerate(p) if c != 0)
    qs = sum(float(c) * u ** k for k, c in enumerate(q) if c != 0)
    return sin(x) * ps + cos(x) * qs


@lru_cache(maxsize=None)
def spherical_bessel_zeros(num_spherical: int, num_radial: int) -> np.ndarray:
    """The first ``num_radial`` positive zeros of j_l for l < num_spherical, [num_spherical, num_radial].

    Zeros of j_l interlace those of j_(l-1), so each is bracketed by two consecutive zeros of the
    previous order and found by bisection (j_0 = sin x / x has zeros at n pi).
    """
    count = num_radial + num_spherical
    zeros = np.zeros((num_spherical, count))
    zeros[0] = np.arange(1, count + 1) * math.pi
    for l in range(1, num_spherical):
        for n in range(count - l):
            lo, hi = zeros[l - 1, n], zeros[l - 1, n + 1]
            f_lo = spherical_bessel(l, lo, num_spherical)
            for _ in range(200):
                mid = 0.5 * (lo + hi)
                f_mid = spherical_bessel(l, mid, num_spherical)
                if np.sign(f_mid) == np.sign(f_lo):
                    lo, f_lo = mid, f_mid
                else:
                    hi = mid
            zeros[l, n] = 0.5 * (lo + hi)
    return zeros[:, :num_radial]


def legendre(cos: Tensor, num: int) -> List[Tensor]:
    """P_0..P_(num-1) of ``cos`` by Bonnet's recurrence."""
    out = [torch.ones_like(cos), cos]
    for l in range(1, num - 1):
        out.append(((2 * l + 1) * cos * out[l] - l * out[l - 1]) / (l + 1))
    return out[:num]


def real_sph_harm_m0(cos: Tensor, num_spherical: int) -> Tensor:
    """Y_l^0 for l < num_spherical as a function of the cosine of the polar angle, [..., L]."""
    ps = legendre(cos, num_spherical)
    return torch.stack([math.sqrt((2 * l + 1) / (4 * math.pi)) * p for l, p in enumerate(ps)], dim=-1)


class GaussianBasis(nn.Module):
    """GemNet radial basis: Gaussians on d / cutoff in [0, 1] times the polynomial envelope."""

    def __init__(self, num_radial: int, cutoff: float, envelope_exponent: int = 5):
        super().__init__()
        self.cutoff = cutoff
        self.envelope = PolynomialEnvelope(envelope_exponent)
        self.register_buffer("centers", torch.linspace(0, 1, num_radial), persistent=False)
        # from the stored (default-dtype) centres, as PyG's GaussianSmearing that fairchem uses
        self.coeff = -0.5 / float(self.centers[1] - self.centers[0]) ** 2 if num_radial > 1 else -0.5

    def forward(self, dist: Tensor) -> Tensor:
        x = (dist / self.cutoff).unsqueeze(-1)
        return self.envelope(x) * torch.exp(self.coeff * (x - self.centers.to(dist.dtype)) ** 2)


class SphericalBasis(nn.Module):
    """DimeNet spherical basis: normalised j_l(z_ln d/c) * envelope / (d/c), times Y_l^0(angle); [T, L * R].

    The radial part is evaluated per edge (:meth:`radial`) and indexed per triplet by the caller.
    """

    def __init__(self, num_spherical: int, num_radial: int, cutoff: float, envelope_exponent: int = 5):
        super().__init__()
        self.num_spherical, self.num_radial, self.cutoff = num_spherical, num_radial, cutoff
        self.envelope = PolynomialEnvelope(envelope_exponent + 1)
        zeros = spherical_bessel_zeros(num_spherical, num_radial)
        norm = np.stack([1.0 / np.sqrt(0.5 * spherical_bessel(l + 1, zeros[l], num_spherical + 1) ** 2)
                         for l in range(num_spherical)])
        self.register_buffer("zeros", torch.tensor(zeros, dtype=torch.get_default_dtype()), persistent=False)
        self.register_buffer("norm", torch.tensor(norm, dtype=torch.get_default_dtype()), persistent=False)
        # coefficients fetched once here: an lru_cache'd sympy call inside forward breaks torch.compile's graph
        self._polys = _spherical_bessel_polys(num_spherical)

    def radial(self, dist: Tensor) -> Tensor:
        """[E, L, R] normalised spherical Bessel functions times envelope / x (as DimeNet)."""
        x = (dist / self.cutoff).view(-1, 1, 1)
        arg = self.zeros.to(dist.dtype) * x
        j = torch.stack([spherical_bessel(l, arg[:, l], polys=self._polys) for l in range(self.num_spherical)], 1)
        return self.envelope(x) / x * self.norm.to(dist.dtype) * j

    def forward(self, radial_kj: Tensor, cos_angle: Tensor) -> Tensor:
        """``radial_kj`` [T, L, R] (radial of each triplet's edge k->j), ``cos_angle`` [T] -> [T, L * R]."""
        cbf = real_sph_harm_m0(cos_angle, self.num_spherical)       # [T, L]
        return (radial_kj * cbf.unsqueeze(-1)).reshape(cos_angle.shape[0], -1)
