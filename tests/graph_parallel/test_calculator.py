"""Model checkpoints and the ASE calculator: same numbers as the model on a batch; BFGS with a quickly
fitted model lowers a rattled EMT slab's energy; the relax script; EMA weights; clear refusals."""
import copy
import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from torch.optim.swa_utils import AveragedModel

from graph_parallel.calculator import GraphParallelCalculator
from graph_parallel.checkpoints import model_from_checkpoint, write_model_checkpoint
from graph_parallel.data import EMBEDDED_DATA_DIR, LmdbDataset, collate_frames, frame_from_atoms
from graph_parallel.data.oc20_lmdb import frame_to_tensors
from graph_parallel.models import build_model, model_graph, predict
from graph_parallel.parallel import partition_graph
from runtime.checkpoint import save_checkpoint
from runtime.errors import CheckpointError, DataError

ROOT = Path(__file__).resolve().parents[2]
CUTOFF, MAX_NEIGHBORS = 4.5, 20
NORMALIZER = {"mean": -3.0, "std": 2.0}


def random_model(name, **overrides):
    torch.manual_seed(0)
    model = build_model(name, "small", cutoff=CUTOFF, **overrides)
    with torch.no_grad():                        # DimeNet++ output layers start at zero
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("name, overrides", [("dimenetpp", {}), ("gemnet_t", {}),
                                             ("gemnet_dt", {"symmetric_edges": "one_sided"})])
def test_calculator_matches_the_model_on_a_batch(name, overrides, tmp_path):
    model = random_model(name, **overrides)
    path = tmp_path / "model.pt"
    write_model_checkpoint(str(path), model, name, NORMALIZER, CUTOFF, MAX_NEIGHBORS, preset="small")
    ds = LmdbDataset(EMBEDDED_DATA_DIR / "train.lmdb")
    frames = [ds[i] for i in (0, 7, 20)]
    reference = copy.deepcopy(model).double()
    if overrides.get("symmetric_edges") == "one_sided":        # the batch the model would get: one-sided edges
        batches = []
        for f in frames:
            edge_index, offsets = model_graph(model, f["pos"].double(), f["cell"].double(), CUTOFF, MAX_NEIGHBORS)
            b = collate_frames([f], CUTOFF, MAX_NEIGHBORS, symmetric=True)
            batches.append(dataclasses.replace(b, edge_index=edge_index, cell_offsets=offsets.float()))
    else:
        batch = collate_frames(frames, CUTOFF, MAX_NEIGHBORS, symmetric=model.symmetric_graph)
        batches = [batch]
    energies, forces = [], []
    for b in batches:
        b = b.to(dtype=torch.float64)
        part = partition_graph(b.edge_index, b.cell_offsets, b.num_atoms, 0, 1, model.triplet_kind)
        e, f = predict(reference, b, part, None, create_graph=False)
        energies.append(e.detach() * NORMALIZER["std"] + NORMALIZER["mean"])
        forces.append(f.detach() * NORMALIZER["std"])
    energies, forces = torch.cat(energies), torch.cat(forces)
    calc = GraphParallelCalculator(str(path), dtype=torch.float64)
    assert calc.info["name"] == name and calc.info["preset"] == "small" and calc.info["ema"] is False
    start = 0
    for k, f in enumerate(frames):
        atoms = Atoms(numbers=f["atomic_numbers"].numpy(), positions=f["pos"].double().numpy(),
                      cell=f["cell"].reshape(3, 3).double().numpy(), pbc=True)
        atoms.calc = calc
        n = len(atoms)
        assert abs(atoms.get_potential_energy() - float(energies[k])) < 1e-9 * max(1.0, abs(float(energies[k])))
        np.testing.assert_allclose(atoms.get_forces(), forces[start:start + n].numpy(), rtol=1e-8, atol=1e-10)
        assert np.abs(atoms.get_forces()).max() > 1e-4
        start += n
    float32 = GraphParallelCalculator(str(path))                  # the checkpoint's own precision
    atoms.calc = float32
    assert abs(atoms.get_potential_energy() - float(energies[-1])) < 1e-4 * max(1.0, abs(float(energies[-1])))


def emt_slab(seed):
    from ase.build import add_adsorbate, fcc111
    from ase.calculators.emt import EMT
    from ase.constraints import FixAtoms
    from ase.optimize import BFGS

    slab = fcc111("Cu", size=(2, 2, 2), vacuum=6.0)
    add_adsorbate(slab, "O", 1.5, "fcc")
    slab.set_tags([0] * 4 + [1] * 4 + [2])
    slab.set_constraint(FixAtoms(indices=range(4)))
    slab.pbc = True
    slab.calc = EMT()
    BFGS(slab, logfile=None).run(fmax=0.02, steps=50)
    slab.calc = None
    return slab


def rattled(atoms, seed, sigma=0.12):
    out = atoms.copy()
    free = out.get_tags() > 0
    out.positions[free] += np.random.default_rng(seed).normal(0.0, sigma, size=(int(free.sum()), 3))
    return out


def emt_energy(atoms):
    from ase.calculators.emt import EMT

    probe = atoms.copy()
    probe.calc = EMT()
    return probe.get_potential_energy()


@pytest.fixture(scope="module")
def fitted_checkpoint(tmp_path_factory):
    """A tiny DimeNet++ fitted in 30 Adam steps to EMT energies and forces of 6 rattled Cu(111)+O slabs."""
    from ase.calculators.emt import EMT

    relaxed = emt_slab(0)
    frames = []
    for k in range(6):
        atoms = rattled(relaxed, 100 + k)
        atoms.calc = EMT()
        frames.append(frame_to_tensors(frame_from_atoms(atoms, atoms.get_potential_energy(),
                                                        atoms.get_forces(apply_constraint=False), sid=0, fid=k)))
    cutoff, max_neighbors = 3.6, 12
    batch = collate_frames(frames, cutoff, max_neighbors)
    mean, std = float(batch.energy.mean()), float(batch.forces.std())
    torch.manual_seed(0)
    model = build_model("dimenetpp", "small", cutoff=cutoff, hidden_channels=16, out_emb_channels=16, int_emb_size=8,
                        num_blocks=1, num_spherical=4, num_radial=4)
    part = partition_graph(batch.edge_index, batch.cell_offsets, batch.num_atoms, 0, 1, model.triplet_kind)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    free = batch.fixed == 0
    for _ in range(30):
        energy, forces = predict(model, batch, part, None)
        loss = ((energy - (batch.energy - mean) / std) ** 2).mean() + \
            30 * ((forces - batch.forces / std)[free] ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    path = tmp_path_factory.mktemp("fitted") / "fitted.pt"
    write_model_checkpoint(str(path), model, "dimenetpp", {"mean": mean, "std": std}, cutoff, max_neighbors,
                           source="fitted in test_calculator")
    return path, relaxed


def test_bfgs_with_the_calculator_lowers_a_rattled_emt_slab(fitted_checkpoint):
    from ase.optimize import BFGS

    path, relaxed = fitted_checkpoint
    atoms = rattled(relaxed, 5)
    emt_start = emt_energy(atoms)
    atoms.calc = GraphParallelCalculator(str(path))
    energies = []
    optimizer = BFGS(atoms, logfile=None)
    optimizer.attach(lambda: energies.append(atoms.get_potential_energy()))
    optimizer.run(fmax=0.05, steps=30)
    assert len(energies) > 3 and energies[-1] < energies[0] - 0.05, energies
    assert np.allclose(atoms.positions[:4], relaxed.positions[:4])          # fixed atoms stay (ASE constraint)
    emt_end = emt_energy(atoms)
    assert emt_end < emt_start - 0.1, (emt_start, emt_end)                   # physically better, not just lower


def test_relax_script_writes_a_trajectory(fitted_checkpoint, tmp_path, capsys):
    from ase.io import read, write

    spec = importlib.util.spec_from_file_location("relax_script", ROOT / "scripts" / "graph_parallel" / "relax.py")
    relax = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(relax)
    path, relaxed = fitted_checkpoint
    structure = tmp_path / "start.traj"
    write(structure, rattled(relaxed, 7))
    traj = tmp_path / "out.traj"
    result = relax.main(["--checkpoint", str(path), "--structure", str(structure), "--steps", "3",
                         "--trajectory", str(traj)])
    out = capsys.readouterr().out
    assert out.count("step ") == len(result["energies"]) == 4 and "energy" in out
    frames = read(traj, ":")
    assert len(frames) == 4 and result["energies"][-1] < result["energies"][0]
    default = relax.main(["--checkpoint", str(path), "--steps", "1", "--trajectory", str(tmp_path / "d.traj"),
                          "--compare_emt"])
    assert len(default["energies"]) == 2 and len(default["emt"]) == 2
    assert relax.run_main(relax.main, ["--checkpoint", str(path), "--structure", str(tmp_path / "absent.xyz")]) == 2


def test_ema_weights_and_older_checkpoints(tmp_path):
    model = random_model("gemnet_dt")
    ema = AveragedModel(model)
    with torch.no_grad():
        for p in ema.module.parameters():
            p.mul_(0.5)
    path = tmp_path / "ema.pt"
    meta = {"recipe": "graph_parallel", "model": "gemnet_dt", "config": model.config_dict()}
    extra = {"normalizer": NORMALIZER, "cutoff": CUTOFF, "max_neighbors": MAX_NEIGHBORS, "preset": "small",
             "ema": ema.state_dict(), "source": None}
    save_checkpoint(str(path), model, meta=meta, extra=extra)
    averaged, info = model_from_checkpoint(str(path))
    raw, raw_info = model_from_checkpoint(str(path), use_ema=False)
    assert info["ema"] and not raw_info["ema"] and not averaged.training
    key = "interactions.0.dense_ca.linear.weight"
    torch.testing.assert_close(averaged.state_dict()[key], 0.5 * model.state_dict()[key])
    torch.testing.assert_close(raw.state_dict()[key], model.state_dict()[key])
    # training checkpoints written before meta carried the model identity keep it in extra
    legacy = tmp_path / "legacy.pt"
    save_checkpoint(str(legacy), model, extra={**extra, "ema": None, "model_name": "gemnet_dt",
                                               "config": model.config_dict()})
    loaded, legacy_info = model_from_checkpoint(str(legacy))
    assert legacy_info["name"] == "gemnet_dt" and loaded.cfg.direct_forces


def test_refusals(tmp_path):
    model = random_model("dimenetpp")
    foreign = tmp_path / "foreign.pt"
    save_checkpoint(str(foreign), model, meta={"recipe": "moflow", "model": "moflow"})
    with pytest.raises(CheckpointError, match="'moflow' checkpoint"):
        model_from_checkpoint(str(foreign))
    anonymous = tmp_path / "anonymous.pt"
    save_checkpoint(str(anonymous), model, extra={"normalizer": NORMALIZER})
    with pytest.raises(CheckpointError, match="does not say which graph_parallel model"):
        model_from_checkpoint(str(anonymous))
    bad_ema = tmp_path / "bad_ema.pt"
    save_checkpoint(str(bad_ema), model, meta={"recipe": "graph_parallel", "model": "dimenetpp",
                                               "config": model.config_dict()},
                    extra={"normalizer": NORMALIZER, "cutoff": CUTOFF, "max_neighbors": MAX_NEIGHBORS,
                           "ema": {"module.rbf.freq": torch.zeros(6), "n_averaged": torch.tensor(3)}})
    with pytest.raises(CheckpointError, match="EMA weights do not match"):
        model_from_checkpoint(str(bad_ema))
    good = tmp_path / "good.pt"
    write_model_checkpoint(str(good), model, "dimenetpp", NORMALIZER, CUTOFF, MAX_NEIGHBORS)
    calc = GraphParallelCalculator(str(good))
    for numbers in ([0, 1], [1, 101]):
        atoms = Atoms(numbers=numbers, positions=[[0, 0, 0], [0, 0, 1.0]], cell=[8, 8, 8], pbc=True)
        atoms.calc = calc
        with pytest.raises(DataError, match="outside 1..100"):
            atoms.get_potential_energy()
    molecule = Atoms("H2O", positions=[[0, 0, 0], [0.76, 0.59, 0], [-0.76, 0.59, 0]])   # no cell, no pbc
    molecule.calc = calc
    assert np.isfinite(molecule.get_potential_energy()) and molecule.get_forces().shape == (3, 3)


def test_calculator_help_lists_its_flags():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "graph_parallel.calculator", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for flag in ("--load_ckpt_path", "--structure", "--log_dir", "--relax", "--optimizer", "--fmax", "--max_steps",
                 "--device", "--symmetric_edges"):
        assert flag in done.stdout


def test_calculator_command_line_single_point_and_relaxation(fitted_checkpoint, tmp_path):
    from ase.io import read, write

    from graph_parallel import calculator
    from tests.graph_parallel.gp_helpers import records

    path, relaxed = fitted_checkpoint
    structure = tmp_path / "frames.extxyz"
    write(structure, [rattled(relaxed, 11), rattled(relaxed, 12)])
    out = tmp_path / "out"
    single = calculator.main(["--load_ckpt_path", str(path), "--structure", str(structure), "--index", ":",
                              "--log_dir", str(out), "--device", "cpu"])
    arrays = np.load(out / "frames.npz")
    assert arrays["natoms"].tolist() == [9, 9] and arrays["forces"].shape == (18, 3) and "converged" not in arrays
    direct = GraphParallelCalculator(str(path))
    for k, atoms in enumerate(read(structure, ":")):
        atoms.calc = direct
        assert arrays["energy"][k] == pytest.approx(atoms.get_potential_energy(), abs=1e-9)
        np.testing.assert_allclose(arrays["forces"][9 * k:9 * k + 9], atoms.get_forces(apply_constraint=False),
                                   atol=1e-9)
    images = read(out / "frames.traj", ":")
    assert len(images) == 2 and images[1].get_potential_energy() == pytest.approx(single["energy"][1])
    logged = records(out, "calculator_log.json")
    assert [r["step"] for r in logged if r["step"] != "PARAMETER"] == [[0], [1]]

    relax = calculator.main(["--load_ckpt_path", str(path), "--structure", str(structure), "--relax",
                             "--optimizer", "FIRE", "--fmax", "0.01", "--steps", "4", "--log_dir", str(out),
                             "--output", str(tmp_path / "relaxed.npz"), "--trajectory", str(tmp_path / "r.traj")])
    assert relax["steps"].tolist() == [4] and relax["converged"].tolist() == [False]
    steps = read(tmp_path / "r.traj", ":")
    assert len(steps) == 5 and steps[-1].get_potential_energy() < steps[0].get_potential_energy()
    np.testing.assert_allclose(relax["positions"], steps[-1].positions)
    assert [r["step"] for r in records(out, "calculator_log.json") if r["step"] != "PARAMETER"] == \
        [[0, 0], [0, 1], [0, 2], [0, 3], [0, 4], [0]]


@pytest.mark.parametrize("flags, message", [
    (["--structure", "absent.xyz"], "--structure .*absent.xyz: no such file"),
    (["--structure", "bad.xyz"], "ase.io.read cannot read it"),
    (["--structure", "frames.xyz", "--optimizer", "Newton"], "invalid choice"),
    (["--structure", "frames.xyz", "--output", "out.csv"], r"\.npz"),
    (["--structure", "frames.xyz", "--symmetric_edges", "one_sided"], "applies to GemNet"),
])
def test_calculator_command_line_refuses_bad_input(fitted_checkpoint, tmp_path, monkeypatch, capsys, flags, message):
    import re

    from ase.io import write

    from graph_parallel import calculator

    path, relaxed = fitted_checkpoint
    monkeypatch.chdir(tmp_path)
    write("frames.xyz", relaxed)
    (tmp_path / "bad.xyz").write_text("not a structure\n")
    code = calculator.run_main(calculator.main, ["--load_ckpt_path", str(path), "--log_dir", "out", *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and re.search(message, err[0]), err
