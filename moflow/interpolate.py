"""Latent-space interpolation between two molecules (as in the MoFlow paper).

``python -m moflow.interpolate --load_ckpt_path CKPT --smiles "CCO" "c1ccccc1O" --steps 8``
encodes both molecules exactly (no dequantisation noise), walks the straight line between their
latents and decodes every point (with valency correction). The endpoints decode to the inputs.
"""
import sys
from typing import List

import numpy as np
import torch

from moflow.chem import decode_graphs, graphs_to_smiles
from moflow.config import DatasetSpec
from moflow.data.encoding import encode_smiles, one_hot_atoms, one_hot_bonds
from moflow.generate import draw_grid, load_trained_model
from moflow.model import MoFlow
from runtime.cli import DEVICES, ArgumentParser, device_type, positive_int
from runtime.errors import ConfigError, run_main


@torch.no_grad()
def encode(model: MoFlow, smiles: List[str], atomic_nums: List[int]) -> torch.Tensor:
    """Exact latents [B, z_dim] of molecules given as SMILES."""
    c = model.config
    spec = DatasetSpec("user", list(atomic_nums), max_atoms=c.max_nodes, max_nodes=c.max_nodes)
    xs, adjs = [], []
    for s in smiles:
        try:
            _, atoms, bonds = encode_smiles(s, spec)
        except ValueError as err:  # SkipMolecule: unparsable, an atom outside the model's set, too large
            raise ConfigError(f"--smiles {s!r}: {err}") from None
        xs.append(one_hot_atoms(atoms, c.num_atom_channels))
        adjs.append(one_hot_bonds(bonds, c.num_bond_channels))
    device = model.ln_var.device
    x = torch.from_numpy(np.stack(xs)).to(device)
    adj = torch.from_numpy(np.stack(adjs)).to(device)
    model.eval()
    z_x, z_adj, _, _ = model(adj, x, dequantize=False)
    return torch.cat([z_x.reshape(len(smiles), -1), z_adj.reshape(len(smiles), -1)], 1)


@torch.no_grad()
def interpolate(model: MoFlow, start: str, end: str, steps: int, atomic_nums: List[int]) -> List[str]:
    """SMILES decoded at ``steps`` evenly spaced points from ``start`` to ``end`` (inclusive)."""
    if steps < 2:
        raise ConfigError(f"--steps must be at least 2, got {steps}")
    z = encode(model, [start, end], atomic_nums)
    t = torch.linspace(0, 1, steps, device=z.device, dtype=z.dtype)[:, None]
    path = (1 - t) * z[0] + t * z[1]
    atoms, bonds = decode_graphs(*model.reverse(path))
    return graphs_to_smiles(atoms, bonds, atomic_nums, correct=True)


def main(argv=None) -> int:
    p = ArgumentParser(prog="python -m moflow.interpolate", description=__doc__)
    p.add_argument("--load_ckpt_path", default="results/moflow/checkpoint.pt", help="a MoFlow checkpoint")
    p.add_argument("--smiles", nargs=2, required=True, metavar=("START", "END"),
                   help="the two molecules to interpolate between (atoms of the checkpoint's dataset)")
    p.add_argument("--steps", type=positive_int, default=8, help="points on the path, both ends included (>= 2)")
    p.add_argument("--png", default="", help="draw the path as a grid image ('' to skip)")
    p.add_argument("--device", choices=DEVICES, default="auto", help="where to run (auto: CUDA when visible)")
    args = p.parse_args(argv)
    model, extra = load_trained_model(args.load_ckpt_path, device_type(args.device))
    path = interpolate(model, args.smiles[0], args.smiles[1], args.steps, extra["atomic_nums"])
    for i, s in enumerate(path):
        print(f"{i}\t{s}")
    if args.png:
        draw_grid([s for s in path if s], args.png, per_row=args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
