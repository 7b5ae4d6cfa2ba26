"""S2EF loss (energy MAE + force L2MAE on free atoms) and metrics, normalised over the data-parallel group.

Counts (structures, free atoms) are summed over the dp group, so the loss of a dp x gp run is the
loss of one process on the merged batch. ``loss_for_backward`` carries the factor dp_size that
cancels the world-mean gradient average (see :mod:`graph_parallel.parallel`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

from .data.batch import S2EFBatch


@dataclass
class Normalizer:
    """Energies are learned as (E - mean) / std and forces as F / std (std in eV)."""

    mean: float = 0.0
    std: float = 1.0

    def state_dict(self) -> Dict[str, float]:
        return {"mean": self.mean, "std": self.std}

    @classmethod
    def fit(cls, energies: Tensor) -> "Normalizer":
        std = float(energies.std()) if energies.numel() > 1 else 1.0
        return cls(float(energies.mean()), std if std > 1e-6 else 1.0)


def _dp_sum(values: Tensor, dp_group) -> Tensor:
    if dp_group is not None and dist.is_initialized() and dist.get_world_size(dp_group) > 1:
        dist.all_reduce(values, group=dp_group)
    return values


def _dp_size(dp_group) -> int:
    return dist.get_world_size(dp_group) if dp_group is not None and dist.is_initialized() else 1


def s2ef_loss(energy: Tensor, forces: Tensor, batch: S2EFBatch, norm: Normalizer = Normalizer(),
              energy_coef: float = 1.0, force_coef: float = 50.0, dp_group=None) -> Tuple[Tensor, Tensor]:
    """``(loss_for_backward, loss_value)`` from normalised predictions (energy [B], forces [N, 3]).

    loss = energy_coef * mean_structures |dE| + force_coef * mean_free_atoms ||dF||_2, in normalised units.
    """
    free = batch.fixed == 0
    target_e = (batch.energy.to(energy.dtype) - norm.mean) / norm.std
    e_err = (energy - target_e).abs().sum()
    f_err = torch.zeros((), dtype=energy.dtype, device=energy.device)
    if forces is not None and force_coef:
        diff = forces[free] - batch.forces.to(forces.dtype)[free] / norm.std
        f_err = torch.sqrt((diff * diff).sum(-1) + 1e-24).sum()            # eps: finite grad at exact zero
    counts = _dp_sum(torch.tensor([batch.num_structures, int(free.sum())], dtype=energy.dtype,
                                  device=energy.device), dp_group)
    share = energy_coef * e_err / counts[0] + force_coef * f_err / counts[1].clamp(min=1)
    if not torch.isfinite(share):
        raise FloatingPointError(f"loss is not finite ({share.item()}): check the learning rate and the data")
    value = _dp_sum(share.detach().clone(), dp_group)
    return share * _dp_size(dp_group), value


def s2ef_error_sums(energy: Tensor, forces: Tensor, batch: S2EFBatch, norm: Normalizer,
                    efwt_energy: float = 0.02, efwt_force: float = 0.03) -> Tensor:
    """Summed errors in eV / eV/A for metrics: [sum|dE|, sum|dF| (components), sum cos(F, F*), #EFwT,
    #structures, #free atoms]. Sum over batches and dp ranks, then :func:`s2ef_metrics`."""
    energy = energy.detach().double() * norm.std + norm.mean
    forces = forces.detach().double() * norm.std
    free = batch.fixed == 0
    de = (energy - batch.energy.double()).abs()
    df = (forces - batch.forces.double()).abs()
    cos = torch.nn.functional.cosine_similarity(forces[free], batch.forces.double()[free], dim=-1)
    max_df = torch.zeros_like(de).scatter_reduce(0, batch.batch[free], df[free].amax(-1), reduce="amax")
    within = (de < efwt_energy) & (max_df < efwt_force)
    return torch.stack([de.sum(), df[free].sum(), cos.sum(), within.sum().double(),
                        torch.tensor(float(batch.num_structures), dtype=torch.float64),
                        free.sum().double()])


def s2ef_metrics(sums: Tensor) -> Dict[str, float]:
    e, f, cos, efwt, n_struct, n_free = sums.tolist()
    return {"energy_mae": e / max(n_struct, 1), "forces_mae": f / max(3 * n_free, 1),
            "forces_cos": cos / max(n_free, 1), "efwt": efwt / max(n_struct, 1)}
