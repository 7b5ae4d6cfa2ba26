"""An ASE calculator for trained graph_parallel checkpoints (single process, gp_size 1).

    from graph_parallel.calculator import GraphParallelCalculator
    atoms.calc = GraphParallelCalculator("checkpoint.pt")
    atoms.get_potential_energy(), atoms.get_forces()      # eV, eV/A

The checkpoint says which model, its config and weights (EMA weights when it has them), the
energy normaliser and the radius graph (cutoff, max_neighbors) it was trained with; the calculator
builds that graph for each structure with :func:`graph_parallel.models.model_graph` (periodic
along the directions where ``atoms.pbc`` is set) and returns E = mean + std * model output and
F = std * model forces (conservative -dE/dx, or GemNet-dT's direct forces). Forces are those on
all atoms; ASE applies the structure's constraints.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes

from runtime.errors import DataError

from .checkpoints import model_from_checkpoint
from .data.batch import S2EFBatch
from .models import model_graph, predict
from .parallel import partition_graph


class GraphParallelCalculator(Calculator):
    """Energy (eV) and forces (eV/A) of ``ase.Atoms`` from a graph_parallel checkpoint."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, checkpoint_path: str, device="cpu", dtype: Optional[torch.dtype] = None, use_ema: bool = True,
                 **kwargs):
        super().__init__(**kwargs)
        self.device = torch.device(device)
        self.model, self.info = model_from_checkpoint(checkpoint_path, self.device, use_ema=use_ema)
        if dtype is not None:
            self.model.to(dtype)
        for p in self.model.parameters():           # only -dE/dpos is needed
            p.requires_grad_(False)
        self.dtype = next(self.model.parameters()).dtype
        self.cutoff, self.max_neighbors = self.info["cutoff"], self.info["max_neighbors"]
        self.normalizer = self.info["normalizer"]

    def batch_from_atoms(self, atoms) -> S2EFBatch:
        """One structure as a batch with the model's radius graph."""
        z = torch.as_tensor(atoms.get_atomic_numbers(), dtype=torch.long)
        num_elements = self.model.cfg.num_elements
        if len(z) == 0 or int(z.min()) < 1 or int(z.max()) > num_elements:
            raise DataError(f"atomic numbers {sorted(set(z.tolist()))} outside 1..{num_elements}, the elements this "
                            f"{self.info['name']} model embeds")
        pos = torch.as_tensor(atoms.get_positions(), dtype=torch.float64)
        pbc = tuple(bool(p) for p in atoms.pbc)
        cell = torch.as_tensor(np.asarray(atoms.get_cell()), dtype=torch.float64)
        if not any(pbc) and abs(float(torch.linalg.det(cell))) < 1e-8:
            cell = torch.eye(3, dtype=torch.float64)        # no images: the cell only has to be invertible
        try:
            edge_index, cell_offsets = model_graph(self.model, pos, cell, self.cutoff, self.max_neighbors, pbc=pbc)
        except ValueError as err:
            raise DataError(f"cannot build the radius graph of this structure: {err}") from None
        n = len(z)
        zeros = torch.zeros(n, dtype=torch.long)
        return S2EFBatch(pos=pos, cell=cell.reshape(1, 3, 3), atomic_numbers=z, natoms=torch.tensor([n]), batch=zeros,
                         tags=zeros, fixed=zeros, energy=torch.zeros(1), forces=torch.zeros(n, 3),
                         sid=torch.zeros(1, dtype=torch.long), fid=torch.zeros(1, dtype=torch.long),
                         edge_index=edge_index, cell_offsets=cell_offsets.to(torch.float64)
                         ).to(self.device, dtype=self.dtype)

    def calculate(self, atoms=None, properties=("energy", "forces"), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        batch = self.batch_from_atoms(self.atoms)
        part = partition_graph(batch.edge_index, batch.cell_offsets, batch.num_atoms, 0, 1,
                               self.model.triplet_kind).to(self.device)
        energy, forces = predict(self.model, batch, part, None, compute_forces=True, create_graph=False)
        mean, std = self.normalizer["mean"], self.normalizer["std"]
        e = float(energy.detach().double()[0]) * std + mean
        self.results = {"energy": e, "free_energy": e,
                        "forces": forces.detach().double().cpu().numpy() * std}
