"""Molecule construction, valency correction and the generation metrics."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from moflow.chem import (canonical, construct_mol, correct_mol, decode_graphs, generation_metrics,
                         graphs_to_smiles, valid_smiles)
from moflow.config import DATASETS
from moflow.data.encoding import canonical_smiles, encode_smiles, one_hot_atoms, one_hot_bonds

ZINC = DATASETS["zinc250k"]


@pytest.mark.parametrize("smiles", ["Oc1ccccc1", "CCS(=O)(=O)c1ccc(Br)cc1", "C#CCN1CCOCC1",
                                    "C[N+](C)(C)C", "O=C1NC(=O)c2ccccc21", "FC(F)(F)c1ccc(I)cc1"])
def test_encode_decode_roundtrip(smiles):
    can, atoms, bonds = encode_smiles(smiles, ZINC)
    x = torch.from_numpy(one_hot_atoms(atoms, ZINC.num_atom_channels))[None]
    adj = torch.from_numpy(one_hot_bonds(bonds))[None]
    a, b = decode_graphs(adj, x)
    assert graphs_to_smiles(a, b, ZINC.atomic_nums, correct=False) == [can]


def _graph(n_atoms, bonds, atom_code=0, n=6):
    atoms = np.full(n, len(ZINC.atomic_nums), dtype=np.int64)
    atoms[:n_atoms] = atom_code
    b = np.full((n, n), 3, dtype=np.int64)
    for i, j, code in bonds:
        b[i, j] = b[j, i] = code
    return atoms, b


def test_overloaded_carbon_is_invalid_then_corrected():
    # carbon with a triple and two single bonds (valence 5)
    atoms, bonds = _graph(4, [(0, 1, 2), (0, 2, 0), (0, 3, 0)])
    mol = construct_mol(atoms, bonds, ZINC.atomic_nums)
    assert valid_smiles(mol) is None
    fixed = valid_smiles(correct_mol(mol))
    assert fixed == "C=C(C)C"  # the triple bond is lowered to a double bond


def test_nitrogen_with_four_bonds_becomes_cation():
    atoms, bonds = _graph(5, [(0, 1, 0), (0, 2, 0), (0, 3, 0), (0, 4, 0)])
    atoms[0] = ZINC.atomic_nums.index(7)
    assert graphs_to_smiles(atoms[None], bonds[None], ZINC.atomic_nums, correct=False) == ["C[N+](C)(C)C"]


def test_fragments_are_invalid_and_correction_keeps_largest():
    atoms, bonds = _graph(5, [(0, 1, 0), (1, 2, 0), (3, 4, 0)])
    mol = construct_mol(atoms, bonds, ZINC.atomic_nums)
    assert valid_smiles(mol) is None
    assert valid_smiles(correct_mol(mol)) == "CCC"


def test_empty_graph_is_invalid():
    atoms, bonds = _graph(0, [])
    assert graphs_to_smiles(atoms[None], bonds[None], ZINC.atomic_nums, correct=True) == [None]


def test_novelty_compares_one_canonical_form():
    """Kekulized training SMILES vs aromatic generated SMILES must still match.

    A string comparison of kekulized training SMILES with aromatic generated ones (a known flaw)
    would report every molecule as novel.
    """
    train_aromatic = ["Oc1ccccc1", "c1ccc2ccccc2c1", "CCO"]
    train_kekule = [canonical_smiles(s, kekule=True) for s in train_aromatic]
    assert train_kekule[0] != train_aromatic[0] and "=" in train_kekule[0]
    generated = ["Oc1ccccc1", "c1ccc2ccccc2c1", "c1ccc2ccccc2c1", "CCN", None]
    raw = [None, "c1ccc2ccccc2c1", None, "CCN", None]
    # naive flawed comparison for reference: everything aromatic looks novel
    naive = [s for s in generated if s and s not in set(train_kekule)]
    assert len(naive) == 4
    for train in (train_aromatic, train_kekule):
        m = generation_metrics(raw, generated, train)
        assert m["validity"] == pytest.approx(80.0)
        assert m["validity_without_correction"] == pytest.approx(40.0)
        assert m["uniqueness"] == pytest.approx(75.0)
        assert m["novelty"] == pytest.approx(25.0)  # only CCN is new
        assert m["nuv"] == pytest.approx(20.0)      # 1 novel unique valid of 5 generated


def test_canonical_is_form_independent():
    assert canonical("C1=CC=CC=C1O") == canonical("Oc1ccccc1") == "Oc1ccccc1"
    assert canonical("not a smiles") is None


def test_metrics_reject_mismatched_lists():
    with pytest.raises(ValueError):
        generation_metrics(["C"], ["C", "CC"], [])


def test_model_output_decoding_uses_argmax():
    adj = F.one_hot(torch.tensor([[[3, 0], [0, 3]]]), 4).permute(0, 3, 1, 2).float()
    x = torch.tensor([[[0.9, 0.1] + [0.0] * 8, [0.0, 0.7] + [0.0] * 8]])
    atoms, bonds = decode_graphs(adj, x)
    assert atoms.tolist() == [[0, 1]] and bonds.tolist() == [[[3, 0], [0, 3]]]
    assert graphs_to_smiles(atoms, bonds, ZINC.atomic_nums, correct=False) == ["CN"]
