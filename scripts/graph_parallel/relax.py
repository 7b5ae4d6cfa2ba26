"""Relax a structure with a graph_parallel checkpoint (ASE BFGS) and write the trajectory.

    python scripts/graph_parallel/relax.py --checkpoint results/graph_parallel/dimenetpp/checkpoint.pt
    python scripts/graph_parallel/relax.py --checkpoint ckpt.pt --structure POSCAR --fmax 0.03 --steps 200

Without --structure it relaxes a rattled EMT slab + adsorbate built like graph_parallel.make_dataset
(--seed picks the system); --compare_emt then also prints its EMT energy before and after. The
model energy and the largest force on a free atom are printed at every step; the trajectory goes
to --trajectory (ASE .traj, one frame per step).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:            # run as a file from anywhere
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from runtime.errors import ConfigError, DataError, MissingFileError, run_main  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="graph_parallel checkpoint (trained or converted)")
    parser.add_argument("--structure", default=None, help="any file ase.io.read understands (default: EMT slab)")
    parser.add_argument("--trajectory", default="relax.traj", help="output trajectory (.traj)")
    parser.add_argument("--fmax", type=float, default=0.05, help="stop when every free atom's force is below (eV/A)")
    parser.add_argument("--steps", type=int, default=100, help="maximum BFGS steps")
    parser.add_argument("--seed", type=int, default=0, help="default structure: system and rattle")
    parser.add_argument("--rattle", type=float, default=0.1, help="default structure: rattle of free atoms (A)")
    parser.add_argument("--compare_emt", action="store_true", help="default structure: print EMT energies too")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--no_ema", action="store_true", help="use the raw weights even if the checkpoint has EMA")
    return parser


def default_structure(seed: int, rattle: float):
    """A make_dataset-style slab + adsorbate with its free atoms rattled."""
    from graph_parallel.make_dataset import build_system

    rng = np.random.default_rng(seed)
    atoms, label = build_system(rng)
    free = atoms.get_tags() > 0
    atoms.positions[free] += rng.normal(0.0, rattle, size=(int(free.sum()), 3))
    return atoms, label


def emt_energy(atoms) -> float:
    from ase.calculators.emt import EMT

    probe = atoms.copy()
    probe.calc = EMT()
    return float(probe.get_potential_energy())


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    from ase.io import read
    from ase.optimize import BFGS

    from graph_parallel.calculator import GraphParallelCalculator

    if args.fmax <= 0 or args.steps < 0:
        raise ConfigError(f"--fmax must be > 0 and --steps >= 0, got {args.fmax} and {args.steps}")
    if args.structure:
        if not Path(args.structure).is_file():
            raise MissingFileError(f"structure file not found: {args.structure}")
        try:
            atoms = read(args.structure)
        except Exception as err:  # noqa: BLE001 - ase raises many kinds for unreadable files
            raise DataError(f"cannot read {args.structure} with ase.io.read ({type(err).__name__}: {err})") from None
        label = Path(args.structure).name
        if args.compare_emt:
            raise ConfigError("--compare_emt applies to the default EMT structure only")
    else:
        atoms, label = default_structure(args.seed, args.rattle)
    atoms.calc = GraphParallelCalculator(args.checkpoint, device=args.device, use_ema=not args.no_ema)
    info = atoms.calc.info
    print(f"{label}: {len(atoms)} atoms; {info['name']} from {args.checkpoint} (cutoff {info['cutoff']}, "
          f"max_neighbors {info['max_neighbors']}, EMA {info['ema']})", flush=True)
    emt_before = emt_energy(atoms) if args.compare_emt else None
    energies = []

    def report():
        energy = atoms.get_potential_energy()
        fmax = float(np.sqrt((atoms.get_forces() ** 2).sum(1)).max()) if len(atoms) else 0.0
        print(f"step {len(energies):4d}  energy {energy:14.6f} eV  fmax {fmax:9.4f} eV/A", flush=True)
        energies.append(float(energy))

    optimizer = BFGS(atoms, trajectory=args.trajectory, logfile=None)
    optimizer.attach(report, interval=1)
    converged = bool(optimizer.run(fmax=args.fmax, steps=args.steps))
    print(f"{'converged' if converged else 'not converged'} after {optimizer.get_number_of_steps()} steps: "
          f"{energies[0]:.6f} -> {energies[-1]:.6f} eV; trajectory {args.trajectory}", flush=True)
    result = {"energies": energies, "converged": converged, "trajectory": args.trajectory}
    if emt_before is not None:
        result["emt"] = (emt_before, emt_energy(atoms))
        print(f"EMT energy {result['emt'][0]:.6f} -> {result['emt'][1]:.6f} eV", flush=True)
    return result


if __name__ == "__main__":
    sys.exit(run_main(main))
