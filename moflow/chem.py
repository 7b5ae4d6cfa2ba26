"""Graph tensors -> RDKit molecules, valency correction and generation metrics.

Generated molecules are decoded from graph codes (elements and single/double/triple bonds), so
they carry no stereochemistry, isotopes or explicit charges except the N+/O+/S+ cations
:func:`construct_mol` derives from an extra bond. Novelty therefore compares them with training
molecules taken through the same encode -> decode path (:func:`model_form`, or the cache's
:meth:`~moflow.data.dataset.MoleculeCache.decoded_smiles`), both written by :func:`canonical`
(RDKit canonical, aromatic form), as the reference implementations do (calvin-zcx/moflow and
NVIDIA's MoFlow decode the training graphs with ``adj_to_smiles`` / ``predictions_to_smiles``).
Comparing with the source SMILES instead would count ``C[C@@H](N)C(=O)O`` or
``[NH3+]CC(=O)[O-]`` regenerated from their own graphs as novel.
"""
from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
from rdkit import Chem, RDLogger

from moflow.config import NO_BOND, DatasetSpec
from moflow.data.encoding import SkipMolecule, encode_smiles

RDLogger.DisableLog("rdApp.*")

_BONDS = {0: Chem.BondType.SINGLE, 1: Chem.BondType.DOUBLE, 2: Chem.BondType.TRIPLE}
_ORDER = {Chem.BondType.SINGLE: 1, Chem.BondType.DOUBLE: 2, Chem.BondType.TRIPLE: 3}
_PT = Chem.GetPeriodicTable()
_CHARGEABLE = (7, 8, 16)  # N+, O+, S+ take one extra bond, as in the reference


def _valence(mol: Chem.RWMol, idx: int) -> int:
    return sum(_ORDER[b.GetBondType()] for b in mol.GetAtomWithIdx(idx).GetBonds())


def _max_valence(atom: Chem.Atom) -> int:
    return max(_PT.GetValenceList(atom.GetAtomicNum())) + max(atom.GetFormalCharge(), 0)


def _first_overloaded(mol: Chem.RWMol) -> Optional[int]:
    for atom in mol.GetAtoms():
        if _valence(mol, atom.GetIdx()) > _max_valence(atom):
            return atom.GetIdx()
    return None


def decode_graphs(adj, x):  # torch tensors; chem imports no torch, so spawned decoders start fast
    """Model output -> (atom codes [B, N], bond codes [B, N, N]) as numpy arrays (argmax)."""
    return x.argmax(-1).cpu().numpy(), adj.argmax(1).cpu().numpy()


def construct_mol(atom_codes: np.ndarray, bond_codes: np.ndarray, atomic_nums: Sequence[int]) -> Chem.RWMol:
    """Build a molecule from codes; N/O/S exceeding their valence by one become cations."""
    none_code = len(atomic_nums)
    present = np.flatnonzero(atom_codes != none_code)
    mol = Chem.RWMol()
    for k in present:
        mol.AddAtom(Chem.Atom(int(atomic_nums[atom_codes[k]])))
    for i_new, i in enumerate(present):
        for j_new, j in enumerate(present[:i_new]):
            code = int(bond_codes[i, j])
            if code == NO_BOND:
                continue
            mol.AddBond(int(i_new), int(j_new), _BONDS[code])
            for a in (i_new, j_new):
                atom = mol.GetAtomWithIdx(int(a))
                if (atom.GetAtomicNum() in _CHARGEABLE and atom.GetFormalCharge() == 0
                        and _valence(mol, int(a)) == _max_valence(atom) + 1):
                    atom.SetFormalCharge(1)
    return mol


def correct_mol(mol: Chem.RWMol) -> Chem.Mol:
    """Valency correction: lower the highest-order bond of an overloaded atom until none is left,
    then keep the largest fragment."""
    mol = Chem.RWMol(mol)
    idx = _first_overloaded(mol)
    while idx is not None:
        bonds = sorted(mol.GetAtomWithIdx(idx).GetBonds(), key=lambda b: _ORDER[b.GetBondType()], reverse=True)
        b = bonds[0]
        i, j, order = b.GetBeginAtomIdx(), b.GetEndAtomIdx(), _ORDER[b.GetBondType()]
        mol.RemoveBond(i, j)
        if order > 1:
            mol.AddBond(i, j, _BONDS[order - 2])
        idx = _first_overloaded(mol)
    if mol.GetNumAtoms() == 0:
        return mol
    frags = Chem.GetMolFrags(mol.GetMol(), asMols=True, sanitizeFrags=False)
    return max(frags, key=lambda m: m.GetNumAtoms())


def valid_smiles(mol: Optional[Chem.Mol]) -> Optional[str]:
    """Canonical SMILES of a valid, connected, non-empty molecule; None otherwise."""
    if mol is None or mol.GetNumAtoms() == 0:
        return None
    try:
        m = Chem.Mol(mol)
        Chem.SanitizeMol(m)
        smi = Chem.MolToSmiles(m)
    except Exception:  # RDKit raises several exception types for invalid chemistry
        return None
    if not smi or "." in smi:
        return None
    return canonical(smi)


def canonical(smiles: str) -> Optional[str]:
    """RDKit canonical aromatic SMILES (the single form used for every comparison)."""
    mol = Chem.MolFromSmiles(smiles)
    return None if mol is None else Chem.MolToSmiles(mol)


def model_form(smiles: str) -> Optional[str]:
    """``smiles`` as the model can produce it: encoded to graph codes like the training data, then
    decoded like a generated molecule (:func:`construct_mol` + :func:`valid_smiles`).

    None if the SMILES does not parse, cannot be encoded or does not decode to one valid molecule
    (e.g. a salt with several fragments). Without brackets or ``/``, ``\\`` bond marks, a canonical
    SMILES has nothing the encoding drops, so it is returned as canonicalised.
    """
    mol = Chem.MolFromSmiles(smiles.strip()) if smiles else None
    if mol is None or mol.GetNumAtoms() == 0:
        return None
    can = Chem.MolToSmiles(mol)
    if not any(c in can for c in "[/\\."):
        return can
    elements = sorted({a.GetAtomicNum() for a in mol.GetAtoms()})
    n = mol.GetNumAtoms()
    try:
        _, atoms, bonds = encode_smiles(can, DatasetSpec("any", elements, max_atoms=n, max_nodes=n))
    except SkipMolecule:
        return None
    return valid_smiles(construct_mol(atoms, bonds, elements))


def graphs_to_smiles(atom_codes: np.ndarray, bond_codes: np.ndarray, atomic_nums: Sequence[int],
                     correct: bool, *, workers: int = 1, chunk: int = 4096) -> List[Optional[str]]:
    """Decode a batch to canonical SMILES (None for invalid molecules).

    ``workers`` > 1 (0: one per available CPU) decodes chunks of ``chunk`` molecules in spawned
    processes, for large sets such as a 250k training set (about 0.5 ms per molecule on one core).
    """
    if workers == 0:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if workers > 1 and len(atom_codes) > chunk:
        starts = range(0, len(atom_codes), chunk)
        jobs = [(atom_codes[s:s + chunk], bond_codes[s:s + chunk], list(atomic_nums), correct) for s in starts]
        ctx = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
        with concurrent.futures.ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx) as pool:
            return [s for part in pool.map(_decode_chunk, jobs) for s in part]
    out = []
    for a, b in zip(atom_codes, bond_codes):
        mol = construct_mol(a, b, atomic_nums)
        out.append(valid_smiles(correct_mol(mol) if correct else mol))
    return out


def _decode_chunk(job) -> List[Optional[str]]:
    atoms, bonds, atomic_nums, correct = job
    return graphs_to_smiles(atoms, bonds, atomic_nums, correct)


def sample_quality(raw: Sequence[Optional[str]], corrected: Sequence[Optional[str]]) -> Dict[str, float]:
    """Percentages of ``n`` generated molecules: ``validity`` (after valency correction),
    ``validity_without_correction``, and ``uniqueness`` = distinct valid corrected molecules over
    valid corrected molecules. The one definition of these names in training logs, evaluate and predict."""
    n = len(corrected)
    if n == 0 or len(raw) != n:
        raise ValueError(f"need equally many raw and corrected results, got {len(raw)} and {n}")
    valid = [s for s in corrected if s is not None]
    return {"validity": 100.0 * len(valid) / n,
            "validity_without_correction": 100.0 * sum(s is not None for s in raw) / n,
            "uniqueness": 100.0 * len(set(valid)) / len(valid) if valid else 0.0}


def generation_metrics(raw: Sequence[Optional[str]], corrected: Sequence[Optional[str]],
                       train_smiles: Iterable[Optional[str]], *, train_decoded: bool = False) -> Dict[str, float]:
    """Percentages: validity (after correction), validity without correction, uniqueness and
    novelty of the valid corrected molecules, and N.U.V. (novel unique valid over all generated).

    Novelty compares in the form the model can produce: ``train_smiles`` (any SMILES form) are
    taken through :func:`model_form`, unless ``train_decoded`` says they already are decoded graphs
    (``cache.subset("train").decoded_smiles()``, cached on disk and much faster for 250k molecules).
    """
    quality = sample_quality(raw, corrected)
    n = len(corrected)
    valid = [s for s in corrected if s is not None]
    unique = set(valid)
    train = set(train_smiles) if train_decoded else {model_form(s) for s in train_smiles if s}
    train.discard(None)
    novel = {s for s in unique if s not in train}
    return {
        **quality,
        "novelty": 100.0 * sum(s not in train for s in valid) / len(valid) if valid else 0.0,
        "nuv": 100.0 * len(novel) / n,
    }
