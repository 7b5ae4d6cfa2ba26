"""Molecule construction, valency correction and the generation metrics."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from moflow.chem import (canonical, construct_mol, correct_mol, decode_graphs, generation_metrics,
                         graphs_to_smiles, model_form, valid_smiles)
from moflow.config import DATASETS
from moflow.data.encoding import canonical_smiles, encode_many, encode_smiles, one_hot_atoms, one_hot_bonds
from moflow.data.sources import SAMPLE_PATH, read_smiles_csv

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


# stereocentre, double-bond stereo, zwitterion: their graphs decode without stereo and charges
STEREO_AND_CHARGED = ["C[C@@H](N)C(=O)O", "C/C=C/C(=O)O", "[NH3+]CC(=O)[O-]"]


def test_regenerated_training_molecules_are_not_novel():
    """A model that regenerates its training graphs exactly has novelty 0 %, not 100 %."""
    _, atoms, bonds, skipped, _ = encode_many(STEREO_AND_CHARGED, ZINC)
    assert not skipped
    raw = graphs_to_smiles(atoms, bonds, ZINC.atomic_nums, correct=False)
    corrected = graphs_to_smiles(atoms, bonds, ZINC.atomic_nums, correct=True)
    assert corrected == ["CC(N)C(=O)O", "CC=CC(=O)O", "NCC(=O)O"] == raw
    # comparing with the source SMILES (the former method) finds none of them: 100 % "novel"
    assert not set(corrected) & {canonical(s) for s in STEREO_AND_CHARGED}
    m = generation_metrics(raw, corrected, STEREO_AND_CHARGED)
    assert m["novelty"] == 0.0 and m["nuv"] == 0.0 and m["uniqueness"] == 100.0
    # already-decoded training SMILES are taken as they are
    assert generation_metrics(raw, corrected, corrected, train_decoded=True)["novelty"] == 0.0
    m = generation_metrics(raw + ["CCO"], corrected + ["CCO"], STEREO_AND_CHARGED)
    assert m["novelty"] == pytest.approx(25.0) and m["nuv"] == pytest.approx(25.0)


def test_model_form_is_encode_then_decode():
    assert [model_form(s) for s in STEREO_AND_CHARGED] == ["CC(N)C(=O)O", "CC=CC(=O)O", "NCC(=O)O"]
    assert model_form("C[N+](C)(C)C") == "C[N+](C)(C)C"  # the cation the decoder derives survives
    assert model_form("CCN.Cl") is None and model_form("nonsense") is None and model_form("") is None
    # the shortcut for SMILES without brackets or bond marks equals the full path
    smiles = read_smiles_csv(SAMPLE_PATH)[:400] + ["[13CH3]C[C@H](O)Cl", "O=[N+]([O-])c1ccccc1"]
    kept, atoms, bonds, _, _ = encode_many(smiles, ZINC)
    full = graphs_to_smiles(atoms, bonds, ZINC.atomic_nums, correct=False)
    assert [model_form(s) for s in kept] == full


def test_parallel_decoding_equals_serial():
    kept, atoms, bonds, _, _ = encode_many(read_smiles_csv(SAMPLE_PATH)[:120], ZINC)
    serial = graphs_to_smiles(atoms, bonds, ZINC.atomic_nums, correct=False)
    assert graphs_to_smiles(atoms, bonds, ZINC.atomic_nums, correct=False, workers=2, chunk=50) == serial == kept


def test_uniqueness_has_one_definition_in_training_evaluate_and_predict(monkeypatch):
    """Distinct valid corrected molecules over valid corrected molecules, whatever raw validity is: a
    log must not show 100 % validity beside 0 % uniqueness because no raw molecule was valid."""
    from moflow import generate, train

    raw, corrected = [None, None, None], ["CCO", "CCN", "CCO"]
    monkeypatch.setattr(train, "sample_smiles", lambda *a, **k: (raw, corrected))

    class Model(torch.nn.Module):
        pass

    args = type("Args", (), {"val_samples": 3, "temperature": 0.6})()
    during_training = train.sample_metrics(Model(), args, [6, 7, 8], None)
    in_evaluate = generation_metrics(raw, corrected, [], train_decoded=True)
    assert during_training["uniqueness"] == in_evaluate["uniqueness"] == pytest.approx(200 / 3)
    assert during_training["validity"] == 100.0 and during_training["validity_without_correction"] == 0.0
    assert generate.sample_quality is train.sample_quality  # predict logs the same function's numbers
