"""Build OC20-format S2EF LMDBs from ASE EMT relaxations of adsorbates on metal slabs.

Each system is an fcc(111) or fcc(100) slab of Cu, Ag, Au, Ni, Pd, Pt or Al with a C/H/N/O
adsorbate, tagged like OC20 (0 subsurface, 1 surface, 2 adsorbate) with the subsurface atoms
fixed. The free atoms are rattled, relaxed with BFGS under EMT, and frames of the trajectory are
stored with their total EMT energy and all atoms' forces. Systems (sids) are split between
``train.lmdb`` and ``val.lmdb``, so validation holds unseen systems.

    python -m graph_parallel.make_dataset --out_dir /tmp/emt --num_systems 40
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from runtime.cli import ArgumentParser, positive_int
from runtime.errors import ConfigError, run_main

from graph_parallel.data import frame_from_atoms, write_lmdb

METALS = ("Cu", "Ag", "Au", "Ni", "Pd", "Pt", "Al")
ADSORBATES = ("H", "O", "N", "C", "OH", "CO", "NH", "CH", "NO", "NH2", "CH3", "H2O")
SITES = {"fcc111": ("ontop", "bridge", "fcc", "hcp"), "fcc100": ("ontop", "bridge", "hollow")}


def build_system(rng: np.random.Generator, size=(2, 2, 3), vacuum: float = 7.0):
    """A tagged, constrained slab + adsorbate (not yet relaxed)."""
    from ase import Atoms
    from ase.build import add_adsorbate, fcc100, fcc111, molecule
    from ase.constraints import FixAtoms

    metal = str(rng.choice(METALS))
    facet = str(rng.choice(tuple(SITES)))
    slab = (fcc111 if facet == "fcc111" else fcc100)(metal, size=tuple(size), vacuum=vacuum)
    surface = slab.get_tags() == 1                    # ase tags layers from the top, 1 = top layer
    name = str(rng.choice(ADSORBATES))
    ads = Atoms(name) if len(name) == 1 else molecule(name)
    ads.rotate(float(rng.uniform(0, 360)), "z", center="COP")
    add_adsorbate(slab, ads, height=float(rng.uniform(1.6, 2.2)), position=str(rng.choice(SITES[facet])),
                  offset=tuple(rng.uniform(-0.15, 0.15, size=2)))
    tags = np.zeros(len(slab), dtype=int)
    tags[: len(surface)] = surface.astype(int)
    tags[len(surface):] = 2
    slab.set_tags(tags)
    slab.set_constraint(FixAtoms(mask=tags == 0))
    slab.center(vacuum=vacuum, axis=2)
    slab.pbc = True
    return slab, f"{name}/{metal}({facet[3:]})"


def relax_frames(atoms, sid: int, rng: np.random.Generator, frames: int, max_steps: int,
                 fmax: float = 0.05, rattle: float = 0.05, max_force: float = 10.0) -> List[Dict]:
    """Rattle the free atoms, relax with BFGS under EMT, keep ``frames`` evenly spaced frames.

    Frames with any force above ``max_force`` eV/A (clashes from the random start) are dropped.
    """
    from ase.calculators.emt import EMT
    from ase.optimize import BFGS

    free = atoms.get_tags() > 0
    atoms.positions[free] += rng.normal(0.0, rattle, size=(int(free.sum()), 3))
    atoms.calc = EMT()
    trajectory = []

    def record():
        trajectory.append((atoms.copy(), atoms.get_potential_energy(), atoms.get_forces(apply_constraint=False)))

    record()
    opt = BFGS(atoms, logfile=None)
    opt.attach(record, interval=1)
    opt.run(fmax=fmax, steps=max_steps)
    trajectory = [t for t in trajectory if np.abs(t[2]).max() <= max_force] or trajectory[-1:]
    picks = np.unique(np.linspace(0, len(trajectory) - 1, num=min(frames, len(trajectory))).round().astype(int))
    return [frame_from_atoms(trajectory[i][0], trajectory[i][1], trajectory[i][2], sid=sid, fid=int(i))
            for i in picks]


def make_dataset(out_dir: Path, num_systems: int, frames_per_system: int, val_fraction: float, seed: int,
                 size=(2, 2, 3), max_steps: int = 60, verbose: bool = True) -> Dict[str, int]:
    if num_systems < 2:
        raise ConfigError("--num_systems must be >= 2 (one validation system at least)")
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"--val_fraction must lie in (0, 1), got {val_fraction}")
    started = time.time()
    rng = np.random.default_rng(seed)
    n_val = max(1, int(round(num_systems * val_fraction)))
    splits = {"train": [], "val": []}
    for sid in range(num_systems):
        atoms, label = build_system(rng, size=size)
        frames = relax_frames(atoms, sid, rng, frames_per_system, max_steps)
        splits["val" if sid >= num_systems - n_val else "train"].extend(frames)
        if verbose:
            print(f"system {sid:4d} {label:16s} {len(atoms):3d} atoms, {len(frames)} frames, "
                  f"E {frames[0]['energy']:.3f} -> {frames[-1]['energy']:.3f} eV")
    counts = {name: write_lmdb(Path(out_dir) / f"{name}.lmdb", frames) for name, frames in splits.items()}
    if verbose:
        print(f"wrote {counts} frames to {out_dir} in {time.time() - started:.1f} s")
    return counts


def main(argv: Optional[List[str]] = None) -> Dict[str, int]:
    parser = ArgumentParser(prog="python -m graph_parallel.make_dataset", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out_dir", type=Path, required=True, help="writes train.lmdb and val.lmdb here")
    parser.add_argument("--num_systems", type=int, default=30, help="slab+adsorbate systems (relaxations)")
    parser.add_argument("--frames_per_system", type=positive_int, default=6, help="frames kept per relaxation")
    parser.add_argument("--val_fraction", type=float, default=0.2, help="fraction of systems for val.lmdb")
    parser.add_argument("--slab_size", type=int, nargs=3, default=(2, 2, 3), help="slab repeats (x, y, layers)")
    parser.add_argument("--max_steps", type=positive_int, default=60, help="BFGS steps per relaxation")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    return make_dataset(args.out_dir, args.num_systems, args.frames_per_system, args.val_fraction, args.seed,
                        size=tuple(args.slab_size), max_steps=args.max_steps)


if __name__ == "__main__":
    sys.exit(run_main(main))
