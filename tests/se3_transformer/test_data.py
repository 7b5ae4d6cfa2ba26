"""QM9 data: RDKit bonds, qm9pack parsing, qm9_edge.npz round trip and download, split, batching."""

import numpy as np
import pytest
import torch
from rdkit import Chem
from rdkit.Chem import AllChem

from runtime.errors import ConfigError, DataError, MissingFileError
from se3_transformer.data import (QM9GraphDataset, download_qm9_edge, load_qm9, precompute_bases, read_qm9_edge,
                                  split_indices, write_qm9_edge)
from se3_transformer.data.qm9 import SAMPLE_PATH, relative_positions
from se3_transformer.data.qm9pack_source import HARTREE_TO_EV, _bonds_from_smiles, molecule_graph, read_qm9pack
from se3_transformer.model.basis import compute_basis
from se3_transformer.model.pairing import PairedGraphBatch


def embedded(smiles: str):
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMolecule(mol, randomSeed=7)
    return [a.GetSymbol() for a in mol.GetAtoms()], mol.GetConformer().GetPositions()


def test_benzene_bonds_features_and_hydrogen_counts():
    elements, pos = embedded("c1ccccc1")
    node_attr, src, dst, edge_attr, method = molecule_graph(elements, pos, "c1ccccc1")
    assert method == "geometry"
    assert len(src) == 24  # 12 bonds, both directions
    bond_counts = edge_attr.sum(0) / 2
    assert bond_counts.tolist() == [6, 0, 0, 6]  # 6 C-H single, 6 aromatic C-C
    carbon = node_attr[0]
    assert carbon[:6].tolist() == [0, 1, 0, 0, 0, 6] and carbon[6] == 1 and carbon[8] == 1 and carbon[10] == 1
    assert node_attr[-1][:6].tolist() == [1, 0, 0, 0, 0, 1]
    assert set(zip(src.tolist(), dst.tolist())) == set(zip(dst.tolist(), src.tolist()))


def test_smiles_fallback_matches_geometry_bonds():
    elements, pos = embedded("C#CC(=O)N")
    from_geometry = molecule_graph(elements, pos, "C#CC(=O)N")
    mol = _bonds_from_smiles("C#CC(=O)N", elements, pos)
    bonds = {(min(b.GetBeginAtomIdx(), b.GetEndAtomIdx()), max(b.GetBeginAtomIdx(), b.GetEndAtomIdx())):
             str(b.GetBondType()) for b in mol.GetBonds()}
    src, dst, onehot = from_geometry[1], from_geometry[2], from_geometry[3]
    names = ["SINGLE", "DOUBLE", "TRIPLE", "AROMATIC"]
    geometry = {(int(s), int(d)): names[int(o.argmax())] for s, d, o in zip(src, dst, onehot) if s < d}
    assert bonds == geometry
    with pytest.raises(ValueError, match="atom order"):
        _bonds_from_smiles("NC(=O)C#C", elements, pos)


def test_zwitterion_smiles_fallback_keeps_hydrogens_explicit():
    elements, pos = embedded("[NH3+]CC([O-])=O")
    mol = _bonds_from_smiles("[NH3+]CC([O-])=O", elements, pos)
    assert mol.GetNumAtoms() == len(elements)
    assert mol.GetAtomWithIdx(0).GetFormalCharge() == 1 and mol.GetAtomWithIdx(0).GetTotalNumHs(includeNeighbors=True) == 3


def test_unknown_atom_type_is_rejected():
    with pytest.raises(DataError, match="unknown atom type"):
        molecule_graph(["C", "Cl"], np.array([[0.0, 0, 0], [1.8, 0, 0]]), "CCl")


def test_qm9pack_first_molecules_are_methane_ammonia_water():
    arrays = read_qm9pack([0, 1, 2])
    assert arrays.n_node.tolist() == [5, 4, 3] and arrays.n_edge.tolist() == [8, 6, 4]
    assert arrays.qm9_index.tolist() == [1, 2, 3]
    homo = arrays.targets[:, 2]
    assert np.allclose(homo, np.array([-0.3877, -0.257, -0.2928]) * HARTREE_TO_EV, atol=1e-4)
    assert arrays.node_attr[0, 10] == 4  # methane carbon carries 4 hydrogens


def test_full_split_sizes_and_scaling():
    train, val, test = split_indices(130_831)
    assert (len(train), len(val), len(test)) == (100_000, 17_748, 13_083)
    assert len(np.unique(np.concatenate([train, val, test]))) == 130_831
    train, val, test = split_indices(1000)
    assert (len(train), len(val), len(test)) == (764, 136, 100)
    assert np.array_equal(split_indices(1000)[0], train)  # seeded


def test_npz_round_trip_and_malformed_files(tmp_path):
    sample = load_qm9("sample", num_molecules=20)
    path = tmp_path / "qm9_edge.npz"
    write_qm9_edge(path, sample)
    back = read_qm9_edge(path)
    for key in ("n_node", "n_edge", "node_attr", "node_pos", "edge_attr", "src", "dst", "targets"):
        assert np.array_equal(getattr(back, key), getattr(sample, key), equal_nan=key == "targets"), key
    np.savez(tmp_path / "bad.npz", n_node=np.array([1]))
    with pytest.raises(DataError, match="bad.npz is not a qm9_edge.npz file: missing arrays"):
        read_qm9_edge(tmp_path / "bad.npz")
    (tmp_path / "trunc.npz").write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match="trunc.npz as npz .corrupt or truncated.*; fetch it again"):
        read_qm9_edge(tmp_path / "trunc.npz", rebuild="fetch it again")
    with pytest.raises(MissingFileError):
        read_qm9_edge(tmp_path / "absent.npz")


def test_download_from_local_http_server(local_server, tmp_path):
    root, base = local_server
    write_qm9_edge(root / "qm9_edge.npz", load_qm9("sample", num_molecules=30))
    (root / "junk.npz").write_bytes(b"not a zip file")
    from runtime.io import sha256_of
    digest = sha256_of(root / "qm9_edge.npz")

    with pytest.raises(DataError, match="checksum mismatch"):
        download_qm9_edge(tmp_path / "a", url=f"{base}/qm9_edge.npz", sha256="0" * 64)
    assert list((tmp_path / "a").iterdir()) == []  # nothing half-written
    with pytest.raises(DataError, match="corrupt or truncated"):
        download_qm9_edge(tmp_path / "b", url=f"{base}/junk.npz")
    with pytest.raises(DataError, match="404"):
        download_qm9_edge(tmp_path / "c", url=f"{base}/absent.npz")

    path = download_qm9_edge(tmp_path / "d", url=f"{base}/qm9_edge.npz", sha256=digest)
    assert len(read_qm9_edge(path)) == 30
    loaded = load_qm9("dgl", data_dir=tmp_path / "d")  # found locally, no download
    assert len(loaded) == 30


def test_collate_offsets_targets_and_precomputed_bases():
    arrays = load_qm9("sample", num_molecules=50)
    bases = precompute_bases(arrays, max_degree=2)
    dataset = QM9GraphDataset(arrays, np.arange(10, 20), task="homo", bases=bases)
    mols = [dataset[i] for i in (0, 3, 7)]
    collated = dataset.collate(mols)
    batch, basis = collated.graph, collated.basis
    assert collated.num_graphs == 3
    moved = collated.to("cpu", non_blocking=True)
    assert torch.equal(moved.graph.pos, batch.pos) and moved.basis.keys() == basis.keys()
    assert isinstance(batch, PairedGraphBatch) and isinstance(moved.graph, PairedGraphBatch)
    half = batch.num_edges // 2  # edges [A, reverse(A)]: what reverse-edge sharing needs, found on the host
    assert torch.equal(batch.edge_index[:, :half], batch.edge_index[:, half:].flip(0))
    assert torch.equal(batch.edge_feats[:half], batch.edge_feats[half:])
    assert batch.num_graphs == 3 and batch.node_feats.shape[1] == 6 and batch.edge_feats.shape[1] == 4
    assert torch.equal(batch.y, torch.from_numpy(arrays.targets[mols, 2]))
    # every edge stays inside its molecule and joins bonded atoms at chemical distances
    assert torch.equal(batch.batch[batch.edge_index[0]], batch.batch[batch.edge_index[1]])
    lengths = batch.rel_pos().norm(dim=-1)
    assert lengths.min() > 0.9 and lengths.max() < 1.8
    fresh = compute_basis(batch.rel_pos(), max_degree=2)
    for key, value in fresh.items():
        assert torch.allclose(basis[key], value, atol=1e-6), key
    assert relative_positions(arrays).shape == (arrays.n_edge.sum(), 3)
    with pytest.raises(ConfigError, match="unknown task"):
        QM9GraphDataset(arrays, np.arange(5), task="nope")
    with pytest.raises(DataError, match="missing .*--dataset dgl"):
        QM9GraphDataset(arrays, np.arange(5), task="U0_atom")
    with pytest.raises(ConfigError, match="the val split has no molecules"):
        QM9GraphDataset(arrays, np.arange(0), split="val")


def test_embedded_sample_is_small_and_valid():
    assert SAMPLE_PATH.stat().st_size < 400_000
    arrays = load_qm9("sample")
    assert len(arrays) == 1000
    assert set(np.unique(arrays.node_attr[:, 5])) <= {1, 6, 7, 8, 9}
    assert np.all(arrays.edge_attr.sum(1) == 1)


@pytest.mark.cuda
def test_loader_pins_batches_and_copies_them_without_blocking_on_cuda():
    from runtime.data import ShardSampler, make_loader

    dataset = QM9GraphDataset(load_qm9("sample", num_molecules=30), np.arange(30))
    loader = make_loader(dataset, 8, ShardSampler(30), dataset.collate, num_workers=2, device="cuda")
    batch = next(iter(loader))
    assert batch.graph.pos.is_pinned() and batch.graph.edge_index.is_pinned()
    moved = batch.to("cuda", non_blocking=True)
    assert isinstance(moved.graph, PairedGraphBatch)  # reverse-edge sharing on CUDA too
    assert moved.graph.pos.is_cuda and torch.equal(moved.graph.y.cpu(), batch.graph.y)
