"""OC20 LMDB round trip, ASE db reader, dataset generator and the periodic radius graph."""
import itertools

import numpy as np
import pytest
import torch

from graph_parallel.data import (EMBEDDED_DATA_DIR, AseDbDataset, LmdbDataset, collate_frames, radius_graph_pbc,
                                 write_lmdb)
from graph_parallel.make_dataset import make_dataset
from runtime.errors import DataError, MissingFileError


def random_frame(rng, n, sid=0, fid=0):
    cell = np.diag(rng.uniform(5, 8, 3)) + np.triu(rng.uniform(-1, 1, (3, 3)), 1)
    return {"pos": rng.uniform(0, 5, (n, 3)), "cell": cell, "atomic_numbers": rng.integers(1, 80, n),
            "natoms": n, "tags": rng.integers(0, 3, n), "fixed": rng.integers(0, 2, n),
            "energy": float(rng.normal()), "forces": rng.normal(size=(n, 3)), "sid": sid, "fid": fid}


def test_lmdb_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    frames = [random_frame(rng, n, sid=i, fid=10 + i) for i, n in enumerate([3, 7, 5])]
    assert write_lmdb(tmp_path / "a.lmdb", frames) == 3
    ds = LmdbDataset(tmp_path / "a.lmdb")
    assert len(ds) == 3
    for i, frame in enumerate(frames):
        got = ds[i]
        np.testing.assert_allclose(got["pos"].numpy(), frame["pos"], rtol=1e-6)
        np.testing.assert_allclose(got["forces"].numpy(), frame["forces"], rtol=1e-6)
        np.testing.assert_allclose(got["cell"].numpy()[0], frame["cell"], rtol=1e-6)
        assert got["atomic_numbers"].tolist() == frame["atomic_numbers"].tolist()
        assert got["tags"].tolist() == frame["tags"].tolist()
        assert got["fixed"].tolist() == frame["fixed"].tolist()
        assert got["energy"].item() == pytest.approx(frame["energy"])
        assert (got["natoms"].item(), got["sid"].item(), got["fid"].item()) == (frame["natoms"], i, 10 + i)
    # a directory of shards reads as one dataset, in file order
    write_lmdb(tmp_path / "b.lmdb", frames[:2])
    both = LmdbDataset(tmp_path)
    assert len(both) == 5 and both[4]["sid"].item() == 1
    with pytest.raises(IndexError):
        ds[3]


def test_lmdb_rejects_bad_records(tmp_path):
    rng = np.random.default_rng(1)
    frame = random_frame(rng, 4)
    del frame["forces"]
    with pytest.raises(DataError, match="frame 0: missing field.*forces"):
        write_lmdb(tmp_path / "bad.lmdb", [frame])
    frame = random_frame(rng, 4)
    frame["forces"] = frame["forces"][:3]
    with pytest.raises(DataError, match=r"frame 0: field 'forces' must have shape \[4, 3\]"):
        write_lmdb(tmp_path / "bad.lmdb", [frame])
    assert not (tmp_path / "bad.lmdb").exists()
    with pytest.raises(MissingFileError, match="missing.lmdb"):
        LmdbDataset(tmp_path / "missing.lmdb")
    assert sorted(p.name for p in tmp_path.iterdir()) == []      # nothing created, not even a -lock file


def test_ase_db_reader(tmp_path):
    from ase.build import fcc111
    from ase.calculators.emt import EMT
    from ase.constraints import FixAtoms
    from ase.db import connect

    slab = fcc111("Cu", (2, 2, 2), vacuum=5.0)
    slab.set_constraint(FixAtoms(indices=[0, 1]))
    slab.calc = EMT()
    slab.get_forces()
    with connect(str(tmp_path / "x.db")) as db:
        db.write(slab, sid=7)
    ds = AseDbDataset(tmp_path / "x.db")
    frame = ds[0]
    assert len(ds) == 1 and frame["sid"].item() == 7
    assert frame["fixed"].tolist() == [1, 1] + [0] * 6
    np.testing.assert_allclose(frame["pos"].numpy(), slab.positions, atol=1e-5)
    assert frame["energy"].item() == pytest.approx(slab.get_potential_energy(), abs=1e-5)


def brute_force_neighbors(pos, cell, cutoff, images=4):
    """All (source, target, offset, distance) within cutoff by explicit loops over images."""
    out = []
    for s in itertools.product(range(-images, images + 1), repeat=3):
        shift = np.asarray(s) @ cell
        for j in range(len(pos)):
            for i in range(len(pos)):
                if i == j and s == (0, 0, 0):
                    continue
                d = np.linalg.norm(pos[j] + shift - pos[i])
                if d <= cutoff:
                    out.append((j, i, s, d))
    return out


@pytest.mark.parametrize("skew", [0.0, 1.7])
def test_radius_graph_matches_brute_force_near_cell_faces(skew):
    rng = np.random.default_rng(2)
    cell = np.array([[4.0, 0.0, 0.0], [skew, 4.5, 0.0], [0.3, -0.4, 5.0]])
    frac = rng.uniform(0, 1, (6, 3))
    # atoms right at the faces and corners of the cell, and one just outside it
    frac = np.vstack([frac, [[1e-4, 0.5, 0.5], [0.9999, 0.5, 0.5], [0.5, 1e-4, 0.9999], [1e-4, 0.9999, 1e-4],
                             [1.02, -0.01, 0.5]]])
    pos = frac @ cell
    cutoff = 4.2
    ref = brute_force_neighbors(pos, cell, cutoff)
    edge_index, offsets = radius_graph_pbc(torch.tensor(pos), torch.tensor(cell), cutoff, max_neighbors=10_000)
    got = {(j, i, tuple(o)) for (j, i), o in zip(edge_index.T.tolist(), offsets.tolist())}
    assert got == {(j, i, s) for j, i, s, _ in ref}
    assert len(got) == edge_index.shape[1]
    # sorted by target, then by distance
    tgt = edge_index[1]
    assert torch.all(tgt[1:] >= tgt[:-1])
    vec = torch.tensor(pos)[edge_index[0]] + offsets.double() @ torch.tensor(cell) - torch.tensor(pos)[edge_index[1]]
    dist = vec.norm(dim=1)
    same = tgt[1:] == tgt[:-1]
    assert torch.all(dist[1:][same] >= dist[:-1][same] - 1e-12)

    # max_neighbors keeps exactly the nearest ones per target
    k = 7
    edge_index_k, offsets_k = radius_graph_pbc(torch.tensor(pos), torch.tensor(cell), cutoff, max_neighbors=k)
    for i in range(len(pos)):
        ref_d = sorted(d for _, t, _, d in ref if t == i)
        assert (edge_index_k[1] == i).sum().item() == min(k, len(ref_d))
    kept_d = {}
    for (j, i), o in zip(edge_index_k.T.tolist(), offsets_k.tolist()):
        kept_d.setdefault(i, []).append(np.linalg.norm(pos[j] + np.asarray(o) @ cell - pos[i]))
    for i, ds in kept_d.items():
        ref_d = sorted(d for _, t, _, d in ref if t == i)[:k]
        np.testing.assert_allclose(sorted(ds), ref_d, atol=1e-9)


def test_radius_graph_without_periodicity():
    pos = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [3.5, 0, 0]])
    edge_index, offsets = radius_graph_pbc(pos, torch.eye(3) * 2.0, cutoff=2.0, max_neighbors=50,
                                           pbc=(False, False, False))
    assert sorted(map(tuple, edge_index.T.tolist())) == [(0, 1), (1, 0)]
    assert torch.all(offsets == 0)


def test_make_dataset_writes_oc20_style_frames(tmp_path):
    counts = make_dataset(tmp_path, num_systems=2, frames_per_system=3, val_fraction=0.5, seed=3, max_steps=5,
                          verbose=False)
    assert counts["train"] >= 1 and counts["val"] >= 1
    frame = LmdbDataset(tmp_path / "train.lmdb")[0]
    tags, fixed, z = frame["tags"], frame["fixed"], frame["atomic_numbers"]
    assert set(tags.tolist()) == {0, 1, 2}
    assert torch.equal(fixed.bool(), tags == 0)            # subsurface fixed, like OC20
    assert set(z[tags == 2].tolist()) <= {1, 6, 7, 8}       # C/H/N/O adsorbate
    assert len(set(z[tags < 2].tolist())) == 1              # one metal
    assert torch.isfinite(frame["forces"]).all() and frame["forces"][fixed.bool()].abs().sum() > 0


def test_embedded_dataset_collates():
    ds = LmdbDataset(EMBEDDED_DATA_DIR / "train.lmdb")
    assert len(ds) > 50
    batch = collate_frames([ds[0], ds[1]], cutoff=6.0, max_neighbors=50)
    assert batch.num_structures == 2 and batch.edge_index.shape[0] == 2
    assert torch.bincount(batch.edge_index[1]).max().item() <= 50
    assert batch.edge_index[0, batch.edge_index[1] < ds[0]["pos"].shape[0]].max() < ds[0]["pos"].shape[0]


def test_symmetric_radius_graph_holds_every_reverse_edge():
    ds = LmdbDataset(EMBEDDED_DATA_DIR / "train.lmdb")
    frame = ds[3]
    plain, plain_off = radius_graph_pbc(frame["pos"], frame["cell"], 6.0, max_neighbors=12)
    sym, sym_off = radius_graph_pbc(frame["pos"], frame["cell"], 6.0, max_neighbors=12, symmetric=True)
    as_set = lambda ei, off: {(j, i, tuple(o)) for (j, i), o in zip(ei.T.tolist(), off.long().tolist())}
    plain_set, sym_set = as_set(plain, plain_off), as_set(sym, sym_off)
    assert len(plain_set) < len(sym_set) == sym.shape[1]                 # truncation broke symmetry
    assert plain_set <= sym_set
    assert sym_set == {(i, j, tuple(-x for x in o)) for j, i, o in sym_set}
    assert torch.all(sym[1, 1:] >= sym[1, :-1])
