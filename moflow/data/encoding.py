"""SMILES <-> padded graph tensors (atom codes and bond codes, one-hot on demand).

Atoms are stored as codes into the dataset's element list (code ``len(atomic_nums)`` = no atom);
bonds as codes 0..3 = single, double, triple, none. Molecules are canonicalised and kekulized,
so aromatic bonds never appear.
"""
from collections import Counter
from typing import Iterable, Optional, Tuple

import numpy as np
from rdkit import Chem, RDLogger

from moflow.config import NO_BOND, DatasetSpec

RDLogger.DisableLog("rdApp.*")

_BOND_CODE = {Chem.BondType.SINGLE: 0, Chem.BondType.DOUBLE: 1, Chem.BondType.TRIPLE: 2}


class SkipMolecule(ValueError):
    """A molecule that cannot be encoded; ``reason`` is a short category for counting."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def canonical_smiles(smiles: str, kekule: bool = False) -> Optional[str]:
    """Canonical SMILES (aromatic by default, kekulized if ``kekule``); None if unparseable."""
    mol = Chem.MolFromSmiles(smiles.strip())
    if mol is None:
        return None
    if kekule:
        Chem.Kekulize(mol, clearAromaticFlags=True)
        return Chem.MolToSmiles(mol, kekuleSmiles=True)
    return Chem.MolToSmiles(mol)


def encode_smiles(smiles: str, spec: DatasetSpec) -> Tuple[str, np.ndarray, np.ndarray]:
    """Return (canonical aromatic SMILES, atom codes [N], bond codes [N, N]) for one molecule."""
    mol = Chem.MolFromSmiles(smiles.strip())
    if mol is None:
        raise SkipMolecule("unparseable", smiles)
    if mol.GetNumAtoms() == 0:
        raise SkipMolecule("empty", repr(smiles))
    canonical = Chem.MolToSmiles(mol)
    mol = Chem.MolFromSmiles(canonical)  # atom order of the canonical SMILES
    Chem.Kekulize(mol, clearAromaticFlags=True)
    n = mol.GetNumAtoms()
    if n > spec.max_atoms:
        raise SkipMolecule("too_many_atoms", f"{smiles} has {n} > {spec.max_atoms}")
    atom_index = {z: i for i, z in enumerate(spec.atomic_nums)}
    atoms = np.full(spec.max_nodes, len(spec.atomic_nums), dtype=np.uint8)
    for i, atom in enumerate(mol.GetAtoms()):
        z = atom.GetAtomicNum()
        if z not in atom_index:
            raise SkipMolecule("unknown_atom", f"{atom.GetSymbol()} in {smiles}")
        atoms[i] = atom_index[z]
    bonds = np.full((spec.max_nodes, spec.max_nodes), NO_BOND, dtype=np.uint8)
    for bond in mol.GetBonds():
        code = _BOND_CODE.get(bond.GetBondType())
        if code is None:
            raise SkipMolecule("unknown_bond", f"{bond.GetBondType()} in {smiles}")
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        bonds[i, j] = bonds[j, i] = code
    return canonical, atoms, bonds


def encode_many(smiles_list: Iterable[str], spec: DatasetSpec):
    """Encode SMILES, skipping (and counting by reason) the ones that do not fit ``spec``.

    Returns (canonical smiles list, atoms [M, N] uint8, bonds [M, N, N] uint8, Counter of skips,
    source indices of the kept molecules).
    """
    kept, atoms, bonds, source_idx = [], [], [], []
    skipped: Counter = Counter()
    for k, smi in enumerate(smiles_list):
        try:
            can, a, b = encode_smiles(smi, spec)
        except SkipMolecule as err:
            skipped[err.reason] += 1
            continue
        kept.append(can)
        atoms.append(a)
        bonds.append(b)
        source_idx.append(k)
    n = spec.max_nodes
    atoms_arr = np.stack(atoms) if atoms else np.zeros((0, n), np.uint8)
    bonds_arr = np.stack(bonds) if bonds else np.zeros((0, n, n), np.uint8)
    return kept, atoms_arr, bonds_arr, skipped, np.asarray(source_idx, dtype=np.int64)


def one_hot_atoms(codes: np.ndarray, num_channels: int) -> np.ndarray:
    """[..., N] codes -> [..., N, C] float32 one-hot."""
    return np.eye(num_channels, dtype=np.float32)[codes]


def one_hot_bonds(codes: np.ndarray, num_channels: int = NO_BOND + 1) -> np.ndarray:
    """[..., N, N] codes -> [..., C, N, N] float32 one-hot (channel first, as the Glow expects)."""
    onehot = np.eye(num_channels, dtype=np.float32)[codes]
    return np.moveaxis(onehot, -1, -3).copy()


def format_skip_counts(skipped: Counter) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(skipped.items())) or "none"
