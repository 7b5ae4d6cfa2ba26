"""An ASE calculator for trained graph_parallel checkpoints (single process, gp_size 1), and its command line.

    from graph_parallel.calculator import GraphParallelCalculator
    atoms.calc = GraphParallelCalculator("checkpoint.pt")
    atoms.get_potential_energy(), atoms.get_forces()      # eV, eV/A

    python -m graph_parallel.calculator --load_ckpt_path CKPT --structure POSCAR            # single point
    python -m graph_parallel.calculator --load_ckpt_path CKPT --structure slab.traj --index : \
        --relax --optimizer LBFGS --fmax 0.03 --max_steps 200                              # relaxation

The checkpoint says which model, its config and weights (EMA weights when it has them), the
energy normaliser and the radius graph (cutoff, max_neighbors) it was trained with; the calculator
builds that graph for each structure with :func:`graph_parallel.models.model_graph` (periodic
along the directions where ``atoms.pbc`` is set) and returns E = mean + std * model output and
F = std * model forces (conservative -dE/dx, or GemNet-dT's direct forces). Forces are those on
all atoms; ASE applies the structure's constraints.

The command line reads every frame ``--index`` picks from any file ``ase.io.read`` understands,
computes each one (or relaxes it with an ASE optimizer until every free atom's force is below
``--fmax`` or ``--max_steps`` steps) and writes into ``--log_dir``:

=========================  ====================================================================
``calculator_log.json``    DLLogger log (``--dllogger_name``): parameters, ``energy`` (eV) and
                           ``fmax`` (eV/A) per frame -- per optimizer step when relaxing
``<stem>.npz``             ``--output``: ``index``, ``natoms``, ``energy`` [B] (eV), ``forces``
                           [sum N, 3] (eV/A), as graph_parallel.predict writes them; relaxed
                           structures add ``positions`` [sum N, 3], ``converged`` and ``steps`` [B]
``<stem>.traj``            ``--trajectory``: ASE trajectory with energies and forces, every
                           optimizer step of every frame when relaxing, else one image per frame
=========================  ====================================================================
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes

from runtime.errors import ConfigError, DataError, MissingFileError, run_main

from graph_parallel.checkpoints import model_from_checkpoint
from graph_parallel.data.batch import S2EFBatch
from graph_parallel.models import model_graph, predict
from graph_parallel.parallel import partition_graph


class GraphParallelCalculator(Calculator):
    """Energy (eV) and forces (eV/A) of ``ase.Atoms`` from a graph_parallel checkpoint."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, checkpoint_path: str, device="cpu", dtype: Optional[torch.dtype] = None, use_ema: bool = True,
                 symmetric_edges: Optional[str] = None, **kwargs):
        from graph_parallel.engine import choose_edges

        super().__init__(**kwargs)
        self.device = torch.device(device)
        self.model, self.info = model_from_checkpoint(checkpoint_path, self.device, use_ema=use_ema)
        choose_edges(self.model, symmetric_edges)         # None: the checkpoint's (fairchem's for converted GemNets)
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


# ---- command line ------------------------------------------------------------------------------------
OPTIMIZERS = ("BFGS", "LBFGS", "FIRE", "MDMin", "BFGSLineSearch", "LBFGSLineSearch")
UNITS = {"energy": ("eV", ":.6f"), "fmax": ("eV/A", ":.4f")}


def build_parser():
    from runtime.cli import ArgumentParser, add_bool, positive_float

    from graph_parallel.engine import RESULTS_DIR, add_edges_arg

    parser = ArgumentParser(prog="python -m graph_parallel.calculator", description=__doc__.split("\n\n")[0])
    parser.add_argument("--load_ckpt_path", required=True,
                        help="checkpoint written by graph_parallel.train or graph_parallel.convert")
    parser.add_argument("--structure", required=True, help="any file ase.io.read understands (POSCAR, .cif, .xyz, "
                                                           ".traj, .db, ...)")
    parser.add_argument("--index", default="-1",
                        help="which frames of the file, in ase.io.read's syntax: '-1' the last, ':' all, '0:10:2'")
    parser.add_argument("--log_dir", "--results_dir", dest="log_dir", default=RESULTS_DIR,
                        help="directory for the log, the energies and forces and the trajectory")
    parser.add_argument("--dllogger_name", "--log_path", dest="dllogger_name", default="calculator_log.json",
                        help="the DLLogger JSON-lines log: a file name inside --log_dir, or a path")
    parser.add_argument("--output", default=None, help="the .npz file of energies and forces (default: "
                                                       "LOG_DIR/<structure stem>.npz)")
    parser.add_argument("--trajectory", default=None,
                        help="the ASE trajectory (default: LOG_DIR/<structure stem>.traj)")
    add_bool(parser, "--relax", help="relax each frame with --optimizer instead of a single point")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="BFGS", help="ASE optimizer for --relax")
    parser.add_argument("--fmax", type=positive_float, default=0.05,
                        help="--relax: converged when every free atom's force is below this (eV/A)")
    parser.add_argument("--max_steps", "--steps", dest="max_steps", type=int, default=100,
                        help="--relax: at most this many optimizer steps per frame")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    add_bool(parser, "--use_ema", default=True, help="use the checkpoint's EMA weights when it has them")
    add_edges_arg(parser)
    return parser


def read_structures(path: str, index: str) -> list:
    """The frames ``index`` picks from ``path`` (a list of ``ase.Atoms``), or a :class:`DataError`."""
    from ase.io import read

    if not Path(path).is_file():
        raise MissingFileError(f"--structure {path}: no such file")
    try:
        frames = read(path, index=index)
    except Exception as err:  # noqa: BLE001 - ase raises many kinds for unreadable files
        raise DataError(f"--structure {path}: ase.io.read cannot read it with --index {index} "
                        f"({type(err).__name__}: {err})") from None
    frames = frames if isinstance(frames, list) else [frames]
    if not frames:
        raise DataError(f"--structure {path}: --index {index} picks no frame")
    return frames


def largest_force(atoms) -> float:
    forces = atoms.get_forces()                  # with the constraints applied: free atoms only
    return float(np.sqrt((forces ** 2).sum(1)).max()) if len(atoms) else 0.0


def run_frame(atoms, calc, args, logger, index: int, trajectory) -> dict:
    """Single point or relaxation of one frame; logs energy and fmax (per step when relaxing)."""
    import ase.optimize

    atoms.calc = calc
    steps, converged = 0, True
    if args.relax:
        optimizer = getattr(ase.optimize, args.optimizer)(atoms, logfile=None)
        optimizer.attach(lambda: logger.log((index, optimizer.get_number_of_steps()),
                                            {"energy": atoms.get_potential_energy(), "fmax": largest_force(atoms)}))
        optimizer.attach(trajectory.write, atoms=atoms)
        converged = bool(optimizer.run(fmax=args.fmax, steps=args.max_steps))
        steps = optimizer.get_number_of_steps()
    energy, forces = atoms.get_potential_energy(), atoms.get_forces(apply_constraint=False)
    if not args.relax:
        trajectory.write(atoms)
    logger.log((index,), {"energy": energy, "fmax": largest_force(atoms), **({"steps": steps} if args.relax else {})})
    return {"energy": energy, "forces": forces, "positions": atoms.get_positions(), "converged": converged,
            "steps": steps}


def main(argv: Optional[List[str]] = None) -> dict:
    from ase.io import Trajectory

    from runtime.io import ensure_writable_dir
    from runtime.logging import setup_logger

    from graph_parallel.engine import RECIPE
    from graph_parallel.predict import write_npz

    args = build_parser().parse_args(argv)
    if args.max_steps < 0:
        raise ConfigError(f"--max_steps must be >= 0, got {args.max_steps}")
    stem = Path(args.structure).stem or "structure"
    output = args.output or os.path.join(args.log_dir, f"{stem}.npz")
    trajectory_path = args.trajectory or os.path.join(args.log_dir, f"{stem}.traj")
    if not output.endswith(".npz"):
        raise ConfigError(f"--output {output}: energies and forces are written as .npz (numpy.load); name it *.npz")
    frames = read_structures(args.structure, args.index)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: CUDA is not available here; use --device cpu")
    except RuntimeError as err:
        raise ConfigError(f"--device {device}: {err}") from None
    calc = GraphParallelCalculator(args.load_ckpt_path, device=device, use_ema=args.use_ema,
                                   symmetric_edges=args.symmetric_edges)
    for path, flag in ((args.log_dir, "--log_dir"), (os.path.dirname(os.path.abspath(output)), "--output"),
                       (os.path.dirname(os.path.abspath(trajectory_path)), "--trajectory")):
        ensure_writable_dir(path, flag)
    logger = setup_logger(args.log_dir, json_name=args.dllogger_name, run_name=f"{calc.info['name']}-calculator",
                          recipe=RECIPE)
    try:
        for name, (unit, fmt) in UNITS.items():
            logger.log_metadata(name, {"unit": unit, "format": fmt})
        logger.log_params({**vars(args), "model": calc.info["name"], "device": device, "frames": len(frames),
                           "symmetric_edges": getattr(calc.model.cfg, "symmetric_edges", None)})
        with Trajectory(trajectory_path, "w") as trajectory:
            results = [run_frame(atoms, calc, args, logger, i, trajectory) for i, atoms in enumerate(frames)]
        arrays = {"index": np.arange(len(frames)), "natoms": np.array([len(a) for a in frames]),
                  "energy": np.array([r["energy"] for r in results]),
                  "forces": np.concatenate([r["forces"] for r in results])}
        if args.relax:
            arrays.update(positions=np.concatenate([r["positions"] for r in results]),
                          converged=np.array([r["converged"] for r in results]),
                          steps=np.array([r["steps"] for r in results]))
        write_npz(output, arrays)
        print(f"wrote energies and forces of {len(frames)} structure(s) to {output}, trajectory {trajectory_path}",
              flush=True)
    finally:
        logger.close()
    return {**arrays, "output": output, "trajectory": trajectory_path}


if __name__ == "__main__":
    sys.exit(run_main(main))
