"""S2EF loss (energy MAE + force L2MAE on free atoms), evaluation sums, metrics and trivial baselines.

=================  ================================================================================
concern            rule
=================  ================================================================================
loss               ``energy_coef * mean_structures |dE| + force_coef * mean_free_atoms ||dF||_2`` in
                   normalised units ((E - mean) / std, F / std). Counts are summed over the
                   data-parallel group, so a dp x gp run computes the loss of one process on the
                   merged batch; ``loss_for_backward`` carries the factor dp_size that cancels the
                   world-mean gradient average (see :mod:`graph_parallel.parallel`).
no host sync       the loss, the counts and the evaluation sums stay on the device of the
                   predictions (no ``.item()``, ``float()`` or CPU tensors per batch); the training
                   loop checks finiteness at log steps.
metrics            from summed errors (:func:`s2ef_error_sums`, all-reduced once per evaluation):
                   energy MAE (eV), force MAE (eV/A, components of free atoms), force cosine,
                   EFwT (|dE| < 0.02 eV and max |dF| < 0.03 eV/A), and the loss.
baselines          :class:`EnergyBaselines`, fitted on the training set: ``mean`` predicts the
                   training mean energy, ``linref`` per-element reference energies fitted by least
                   squares (E ~ sum_z n_z w_z + b), ``zero`` predicts zero forces.
=================  ================================================================================
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from graph_parallel.data.batch import S2EFBatch

NUM_ELEMENTS = 101          # atomic numbers 0..100 (0 unused)


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


@dataclass
class EnergyBaselines:
    """Trivial energy predictors fitted on training frames (``{split}_energy_mae_baseline_{mean,linref}``)."""

    mean: float = 0.0
    linref: List[float] = field(default_factory=lambda: [0.0] * NUM_ELEMENTS)   # eV per atom of element z
    bias: float = 0.0
    frames: int = 0

    @classmethod
    def fit(cls, compositions: np.ndarray, energies: np.ndarray) -> "EnergyBaselines":
        """``compositions`` [F, 101] atom counts per element, ``energies`` [F] in eV: least squares with a bias
        (minimum-norm solution, so elements absent from the training set get weight 0)."""
        energies = np.asarray(energies, dtype=np.float64)
        design = np.hstack([np.asarray(compositions, dtype=np.float64), np.ones((len(energies), 1))])
        weights = np.linalg.lstsq(design, energies, rcond=None)[0] if len(energies) else np.zeros(NUM_ELEMENTS + 1)
        return cls(float(energies.mean()) if len(energies) else 0.0, [float(w) for w in weights[:-1]],
                   float(weights[-1]), len(energies))

    def state_dict(self) -> Dict:
        return {"mean": self.mean, "linref": list(self.linref), "bias": self.bias, "frames": self.frames}

    @classmethod
    def from_state(cls, state: Dict) -> "EnergyBaselines":
        return cls(float(state["mean"]), [float(w) for w in state["linref"]], float(state["bias"]),
                   int(state.get("frames", 0)))

    def linref_energy(self, batch: S2EFBatch, weights: Tensor) -> Tensor:
        """Per-structure linear-reference energy [B] (``weights``: :meth:`weights_on` of the batch's device)."""
        per_atom = weights[batch.atomic_numbers]
        return torch.zeros(batch.num_structures, dtype=weights.dtype, device=weights.device) \
            .index_add_(0, batch.batch, per_atom) + self.bias

    def weights_on(self, device) -> Tensor:
        return torch.tensor(self.linref, dtype=torch.float64).to(device, non_blocking=True)   # no stream sync


def energy_statistics(dataset, limit: int = 20000) -> Tuple[Normalizer, EnergyBaselines]:
    """Normaliser and baselines from up to ``limit`` evenly spaced training frames (every frame if fewer)."""
    step = max(1, -(-len(dataset) // limit))
    indices = range(0, len(dataset), step)
    compositions = np.zeros((len(indices), NUM_ELEMENTS))
    energies = np.zeros(len(indices))
    for row, i in enumerate(indices):
        frame = dataset.raw(i)
        np.add.at(compositions[row], frame["atomic_numbers"], 1.0)
        energies[row] = frame["energy"]
    return Normalizer.fit(torch.from_numpy(energies)), EnergyBaselines.fit(compositions, energies)


def _dp_sum(values: Tensor, dp_group) -> Tensor:
    if dp_group is not None and dist.is_initialized() and dist.get_world_size(dp_group) > 1:
        dist.all_reduce(values, group=dp_group)
    return values


def _dp_size(dp_group) -> int:
    return dist.get_world_size(dp_group) if dp_group is not None and dist.is_initialized() else 1


def s2ef_loss(energy: Tensor, forces: Optional[Tensor], batch: S2EFBatch, norm: Normalizer = Normalizer(),
              energy_coef: float = 1.0, force_coef: float = 50.0, dp_group=None) -> Tuple[Tensor, Tensor]:
    """``(loss_for_backward, loss_value)`` from normalised predictions (energy [B], forces [N, 3]).

    loss = energy_coef * mean_structures |dE| + force_coef * mean_free_atoms ||dF||_2, in normalised
    units. ``loss_value`` is detached and identical on every rank of the dp group. No host sync.
    """
    free = (batch.fixed == 0).to(energy.dtype)           # a mask, not boolean indexing (that syncs)
    target_e = (batch.energy.to(energy.dtype) - norm.mean) / norm.std
    e_err = (energy - target_e).abs().sum()
    f_err = energy.new_zeros(())
    if forces is not None and force_coef:
        diff = forces - batch.forces.to(forces.dtype) / norm.std
        f_err = (torch.sqrt((diff * diff).sum(-1) + 1e-24) * free).sum()   # eps: finite grad at exact zero
    counts = _dp_sum(torch.stack([energy.new_full((), float(batch.num_structures)), free.sum()]), dp_group)
    share = energy_coef * e_err / counts[0] + force_coef * f_err / counts[1].clamp(min=1)
    value = _dp_sum(share.detach().clone(), dp_group)
    return share * _dp_size(dp_group), value


SUMS = ("energy_abs", "forces_abs", "forces_cos", "efwt", "structures", "free_atoms", "forces_l2",
        "energy_abs_mean", "energy_abs_linref", "forces_abs_zero")


def s2ef_error_sums(energy: Tensor, forces: Optional[Tensor], batch: S2EFBatch, norm: Normalizer,
                    baselines: Optional[EnergyBaselines] = None, linref_weights: Optional[Tensor] = None,
                    efwt_energy: float = 0.02, efwt_force: float = 0.03) -> Tensor:
    """Summed errors in eV and eV/A, float64 on the predictions' device, in the order of :data:`SUMS`.

    Sum over batches and dp ranks (one all-reduce), then :func:`s2ef_metrics`. Baseline sums are 0
    without ``baselines``; the force terms are 0 without ``forces``.
    """
    device = energy.device
    energy = energy.detach().double() * norm.std + norm.mean
    target_e = batch.energy.double()
    free = (batch.fixed == 0).double()                   # masks throughout: boolean indexing would sync
    de = (energy - target_e).abs()
    zero = torch.zeros((), dtype=torch.float64, device=device)
    f_abs = f_cos = f_l2 = zero
    within = de < efwt_energy
    target_f = batch.forces.double()
    if forces is not None:
        forces = forces.detach().double() * norm.std
        diff = forces - target_f
        df = diff.abs() * free[:, None]
        f_abs = df.sum()
        f_l2 = (diff.norm(dim=-1) * free).sum()
        f_cos = (torch.nn.functional.cosine_similarity(forces, target_f, dim=-1) * free).sum()
        max_df = torch.zeros_like(de).scatter_reduce(0, batch.batch, df.amax(-1), reduce="amax")
        within = within & (max_df < efwt_force)
    else:
        within = torch.zeros_like(within)
    mean_abs = linref_abs = zero
    if baselines is not None:
        mean_abs = (target_e - baselines.mean).abs().sum()
        weights = linref_weights if linref_weights is not None else baselines.weights_on(device)
        linref_abs = (target_e - baselines.linref_energy(batch, weights)).abs().sum()
    return torch.stack([de.sum(), f_abs, f_cos, within.sum().double(),
                        torch.full((), float(batch.num_structures), dtype=torch.float64, device=device),
                        free.sum(), f_l2, mean_abs, linref_abs, (target_f.abs() * free[:, None]).sum()])


def s2ef_metrics(sums: Sequence[float], norm: Normalizer = Normalizer(), energy_coef: float = 1.0,
                 force_coef: float = 50.0, baselines: bool = True, forces: bool = True) -> Dict[str, float]:
    """Metric names (without the split prefix) -> values, from the all-reduced :func:`s2ef_error_sums`."""
    s = dict(zip(SUMS, (float(v) for v in sums)))
    n_struct, n_free = max(s["structures"], 1.0), max(s["free_atoms"], 1.0)
    out = {"energy_mae": s["energy_abs"] / n_struct}
    loss = energy_coef * s["energy_abs"] / norm.std / n_struct
    if forces:
        out.update(forces_mae=s["forces_abs"] / (3 * n_free), forces_cos=s["forces_cos"] / n_free,
                   efwt=100.0 * s["efwt"] / n_struct)
        loss += force_coef * s["forces_l2"] / norm.std / n_free
    out["loss"] = loss
    if baselines:
        out["energy_mae_baseline_mean"] = s["energy_abs_mean"] / n_struct
        out["energy_mae_baseline_linref"] = s["energy_abs_linref"] / n_struct
        if forces:
            out["forces_mae_baseline_zero"] = s["forces_abs_zero"] / (3 * n_free)
    out["size"] = int(round(s["structures"]))
    return out
