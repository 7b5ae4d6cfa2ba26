"""Write the fairchem fixtures of tests/graph_parallel/test_fairchem_fixtures.py: tiny fairchem checkpoints
(DimeNet++, GemNet-T, GemNet-dT) and fairchem's own energies and forces on 5 structures.

fairchem-core 1.x needs torch_scatter and torch_sparse, which have no wheels for torch 2.13, so this
runs in a separate virtual environment beside the project's, with the pure-PyTorch stand-ins of
tests/graph_parallel/fairchem_shims.py; the project's environment never gets fairchem:

    python -m venv --system-site-packages /tmp/fcvenv          # sees this torch and torch_geometric
    /tmp/fcvenv/bin/pip install --no-deps 'fairchem-core==1.10.0'
    PYTHONPATH=$PWD /tmp/fcvenv/bin/python scripts/graph_parallel/make_fairchem_fixtures.py

Each model is built with fairchem's own class (``DimeNetPlusPlusWrap``, ``GemNetT``; otf_graph, so
fairchem builds its own radius graph, with max_neighbors truncation), trained for ``--steps`` Adam
steps on embedded EMT frames with fairchem's S2EF losses (energy MAE + force L2MAE, on normalised
targets), and saved in the layout fairchem's trainer writes (``state_dict`` under ``module.``,
``config`` with the model section, ``normalizers`` target / grad_target with mean and rmsd). The
GemNet scale factors are set to fixed values first (as a fitted scale file would) and the
GemNet-dT force normaliser differs from the energy one, so the converter's rescaling is exercised.
Then fairchem's float64 energies (eV) and forces (eV/A) on 5 validation structures go to
``reference.npz`` beside the structures (numbers, positions, cells, natoms). The weights stay float32.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:            # run as a file from anywhere
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from runtime.errors import ConfigError, run_main  # noqa: E402

OUT = ROOT / "tests" / "graph_parallel" / "fixtures" / "fairchem"
TRAIN_FRAMES, VAL_FRAMES = list(range(0, 60, 10)), [0, 8, 17, 26, 35]
CUTOFF = 5.0
GEMNET = dict(num_spherical=7, num_radial=16, num_blocks=2, emb_size_atom=16, emb_size_edge=16, emb_size_trip=8,
              emb_size_rbf=8, emb_size_cbf=6, emb_size_bil_trip=10, num_before_skip=1, num_after_skip=2,
              num_concat=1, num_atom=2, cutoff=CUTOFF, max_neighbors=12, otf_graph=True)
DIMENETPP = dict(hidden_channels=16, num_blocks=2, int_emb_size=8, basis_emb_size=4, out_emb_channels=12,
                 num_spherical=4, num_radial=6, cutoff=CUTOFF, otf_graph=True)
MODELS = {"dimenetpp": ("dimenetplusplus", DIMENETPP), "gemnet_t": ("gemnet_t", {**GEMNET, "direct_forces": False}),
          "gemnet_dt": ("gemnet_t", {**GEMNET, "direct_forces": True})}


def fairchem_classes():
    """fairchem's DimeNet++ and GemNet-T classes, with the torch_scatter/torch_sparse stand-ins installed."""
    from tests.graph_parallel.fairchem_shims import shim_modules

    sys.modules.update(shim_modules())
    try:
        from fairchem.core.models.dimenet_plus_plus import DimeNetPlusPlusWrap
        from fairchem.core.models.gemnet.gemnet import GemNetT
    except ImportError as err:
        raise ConfigError(f"fairchem-core < 2 is not importable here ({err}); run this in the venv the module "
                          "docstring sets up") from None
    return {"dimenetplusplus": DimeNetPlusPlusWrap, "gemnet_t": GemNetT}


def frames(split: str, indices):
    """(numbers, positions, cell, energy, forces, fixed) of embedded frames; cells rounded to float32-exact values
    (fairchem computes image offsets in float32)."""
    from graph_parallel.data import EMBEDDED_DATA_DIR, LmdbDataset

    ds = LmdbDataset(EMBEDDED_DATA_DIR / f"{split}.lmdb")
    out = []
    for i in indices:
        r = ds.raw(i)
        cell = np.round(np.asarray(r["cell"], dtype=np.float64).reshape(3, 3) * 256) / 256
        out.append((np.asarray(r["atomic_numbers"]), np.asarray(r["pos"], dtype=np.float64), cell,
                    float(r["energy"]), np.asarray(r["forces"], dtype=np.float64), np.asarray(r["fixed"])))
    return out


def fairchem_batch(items, dtype):
    from torch_geometric.data import Batch, Data

    data = [Data(pos=torch.tensor(pos, dtype=dtype), cell=torch.tensor(cell, dtype=dtype)[None],
                 atomic_numbers=torch.tensor(z, dtype=torch.long), natoms=torch.tensor([len(z)]),
                 fixed=torch.tensor(fixed, dtype=torch.long), tags=torch.zeros(len(z), dtype=torch.long),
                 pbc=torch.tensor([[True, True, True]]))
            for z, pos, cell, _, _, fixed in items]
    return Batch.from_data_list(data)


def set_scale_factors(model) -> None:
    with torch.no_grad():
        factors = sorted((n, p) for n, p in model.named_parameters() if n.endswith("scale_factor"))
        for k, (_, p) in enumerate(factors):
            p.fill_(0.6 + 0.1 * k)


def train_model(model, items, energy_norm, force_rmsd, steps: int) -> None:
    """Adam on fairchem's S2EF losses (energy MAE + 10 x force L2MAE on free atoms, normalised targets)."""
    batch = fairchem_batch(items, torch.float32)
    target_e = (torch.tensor([e for *_, e, _, _ in items], dtype=torch.float32) - energy_norm[0]) / energy_norm[1]
    target_f = torch.tensor(np.concatenate([f for *_, f, _ in items]), dtype=torch.float32) / force_rmsd
    free = batch.fixed == 0
    trainable = [p for n, p in model.named_parameters() if p.requires_grad and not n.endswith("scale_factor")]
    optimizer = torch.optim.Adam(trainable, lr=2e-3)
    model.train()
    for _ in range(steps):
        out = model(batch)
        loss = (out["energy"].reshape(-1) - target_e).abs().mean() + \
            10 * (out["forces"] - target_f)[free].norm(dim=-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def float64_forward(model, items) -> dict:
    """fairchem's outputs in float64 on fairchem's own radius graph (built from the float32 batch: fairchem's
    radius_graph_pbc works in float32), handed to the model as a precomputed graph."""
    graph = model.generate_graph(fairchem_batch(items, torch.float32))      # as the model's own forward does
    batch = fairchem_batch(items, torch.float64)
    batch.edge_index, batch.cell_offsets, batch.neighbors = graph.edge_index, graph.cell_offsets.double(), \
        graph.neighbors
    model = model.double()
    model.otf_graph = False
    try:
        return model(batch)
    finally:
        model.otf_graph = True
        model.float()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out_dir", default=str(OUT), help="where the fixtures go")
    parser.add_argument("--steps", type=int, default=10, help="Adam steps per model")
    args = parser.parse_args(argv)
    classes = fairchem_classes()
    train, val = frames("train", TRAIN_FRAMES), frames("val", VAL_FRAMES)
    energies = np.array([e for *_, e, _, _ in train])
    energy_norm = tuple(float(np.float32(x)) for x in (energies.mean(), energies.std()))   # fairchem's buffers: float32
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reference = {"numbers": np.concatenate([z for z, *_ in val]), "positions": np.concatenate([p for _, p, *_ in val]),
                 "cells": np.stack([c for _, _, c, *_ in val]), "natoms": np.array([len(z) for z, *_ in val])}
    for ours, (name, attrs) in MODELS.items():
        torch.manual_seed(0)
        model = classes[name](**attrs)
        force_rmsd = energy_norm[1] * (0.5 if ours == "gemnet_dt" else 1.0)      # dT: its own force normaliser
        if name == "gemnet_t":
            set_scale_factors(model)
        train_model(model, train, energy_norm, force_rmsd, args.steps)
        config = {"trainer": "forces", "model": {"name": name, **attrs}}
        normalizers = {"target": {"mean": torch.tensor(energy_norm[0]), "rmsd": torch.tensor(energy_norm[1])},
                       "grad_target": {"mean": torch.tensor(0.0), "rmsd": torch.tensor(force_rmsd)}}
        torch.save({"epoch": 1, "step": args.steps, "config": config, "normalizers": normalizers, "ema": None,
                    "amp": None, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}},
                   out / f"{ours}.pt")
        result = float64_forward(model, val)
        reference[f"{ours}_energy"] = result["energy"].detach().reshape(-1).numpy() * energy_norm[1] + energy_norm[0]
        reference[f"{ours}_forces"] = result["forces"].detach().numpy() * force_rmsd
        print(f"{ours}: fairchem {name}, {sum(p.numel() for p in model.parameters()):,} parameters, energies "
              + " ".join(f"{e:.4f}" for e in reference[f"{ours}_energy"]), flush=True)
    np.savez(out / "reference.npz", **reference)
    print(f"wrote {sorted(p.name for p in out.iterdir())} to {out}", flush=True)
    return reference


if __name__ == "__main__":
    sys.exit(run_main(main))
