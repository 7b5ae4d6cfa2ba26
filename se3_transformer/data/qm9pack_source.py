"""QM9 from the ``qm9pack`` wheel: parse its CSVs once, derive bonds with RDKit, write a qm9_edge.npz.

``pip install --no-deps qm9pack`` ships ``qm9pack/data/qm9_part{1,2,3}.csv`` (130,831 molecules,
B3LYP geometries as Python-literal lists, properties in atomic units). The package itself is never
imported (it needs pkg_resources); its data directory is located through importlib.

Bonds: RDKit's ``DetermineBonds`` on the 3-D geometry; if that fails, the molecule's SMILES (whose
heavy atoms are in the same order as the XYZ block) with each hydrogen bonded to its nearest heavy
atom. Aromatic bonds are those RDKit perceives after sanitisation.
"""
from __future__ import annotations

import ast
import csv
import importlib.util
import json
import warnings
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
from rdkit import Chem, RDLogger
from rdkit.Chem import rdDetermineBonds

from runtime.errors import DataError, MissingFileError
from se3_transformer.data.dgl_format import QM9_TARGETS, QM9Arrays

HARTREE_TO_EV = 27.2113825435  # the constant DGL uses
ATOM_TYPES = {"H": 0, "C": 1, "N": 2, "O": 3, "F": 4}
ATOMIC_NUMBERS = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
BOND_TYPES = {Chem.BondType.SINGLE: 0, Chem.BondType.DOUBLE: 1, Chem.BondType.TRIPLE: 2, Chem.BondType.AROMATIC: 3}
CSV_FILES = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
NUM_MOLECULES = 130_831
# qm9pack column -> (DGL target name, factor to DGL units); the *_atom targets are not in qm9pack.
COLUMNS = {"Dipole_debye": ("mu", 1.0), "Polarizability_bohr3": ("alpha", 1.0), "HOMO_au": ("homo", HARTREE_TO_EV),
           "LUMO_au": ("lumo", HARTREE_TO_EV), "HOMO_LUMO_gap_au": ("gap", HARTREE_TO_EV), "R2_bohr2": ("r2", 1.0),
           "ZPVE_au": ("zpve", HARTREE_TO_EV), "InternalEnergy_0K_au": ("U0", HARTREE_TO_EV),
           "InternalEnergy_298K_au": ("U", HARTREE_TO_EV), "Enthalphy_298K_au": ("H", HARTREE_TO_EV),
           "GibbsFreeEnergy_298K_au": ("G", HARTREE_TO_EV), "Heatcapacity_Cv_cal_mol_K": ("Cv", 1.0),
           "RotA_GHz": ("A", 1.0), "RotB_GHz": ("B", 1.0), "RotC_GHz": ("C", 1.0)}


def qm9pack_data_dir() -> Path:
    """The ``qm9pack/data`` directory of the installed wheel (without importing the package)."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise MissingFileError("qm9pack is not installed: run `pip install --no-deps qm9pack`")
    data_dir = Path(list(spec.submodule_search_locations)[0]) / "data"
    missing = [f for f in CSV_FILES if not (data_dir / f).is_file()]
    if missing:
        raise MissingFileError(f"qm9pack data files missing from {data_dir}: {missing}; reinstall it with "
                               "`pip install --force-reinstall --no-deps qm9pack`")
    return data_dir


def _literal(text: str):
    try:
        return json.loads(text.replace("'", '"'))
    except json.JSONDecodeError:
        return ast.literal_eval(text)


def _bonds_from_geometry(elements: Sequence[str], pos: np.ndarray) -> Chem.Mol:
    block = f"{len(elements)}\n\n" + "\n".join(f"{e} {x:.10f} {y:.10f} {z:.10f}" for e, (x, y, z) in zip(elements, pos))
    mol = Chem.MolFromXYZBlock(block)
    if mol is None:
        raise ValueError("RDKit could not read the XYZ block")
    rdDetermineBonds.DetermineBonds(mol, charge=0)
    Chem.SanitizeMol(mol)
    return mol


def _bonds_from_smiles(smiles: str, elements: Sequence[str], pos: np.ndarray) -> Chem.Mol:
    heavy = Chem.MolFromSmiles(smiles)
    heavy_elements = [e for e in elements if e != "H"]
    if heavy is None or [a.GetSymbol() for a in heavy.GetAtoms()] != heavy_elements \
            or elements[:len(heavy_elements)] != heavy_elements:
        raise ValueError(f"SMILES {smiles!r} does not match the XYZ atom order")
    mol = Chem.RWMol(heavy)
    for atom in mol.GetAtoms():  # hydrogens are added explicitly below, e.g. for [NH3+]
        atom.SetNumExplicitHs(0)
    n_heavy = len(heavy_elements)
    for h in range(n_heavy, len(elements)):
        nearest = int(np.argmin(np.linalg.norm(pos[:n_heavy] - pos[h], axis=1)))
        idx = mol.AddAtom(Chem.Atom(1))
        mol.AddBond(nearest, idx, Chem.BondType.SINGLE)
    for atom in mol.GetAtoms():
        atom.SetNoImplicit(True)
    Chem.SanitizeMol(mol)
    return mol.GetMol()


def _connectivity_only(elements: Sequence[str], pos: np.ndarray) -> Chem.Mol:
    """Last resort: distance-based connectivity, every bond single, no sanitisation."""
    block = f"{len(elements)}\n\n" + "\n".join(f"{e} {x:.10f} {y:.10f} {z:.10f}" for e, (x, y, z) in zip(elements, pos))
    mol = Chem.MolFromXYZBlock(block)
    rdDetermineBonds.DetermineConnectivity(mol)
    return mol


BOND_METHODS = ("geometry", "smiles", "connectivity")


def molecule_graph(elements: Sequence[str], pos: np.ndarray, smiles: str):
    """Node attributes ``[n, 11]``, local ``src``/``dst`` (both directions), bond one-hots ``[2b, 4]``
    and the name of the bond-perception method that succeeded (see ``BOND_METHODS``)."""
    unknown = sorted(set(elements) - set(ATOM_TYPES))
    if unknown:
        raise DataError(f"unknown atom type(s) {unknown} (QM9 has H C N O F)")
    try:
        mol, method = _bonds_from_geometry(elements, pos), "geometry"
    except Exception:  # RDKit raises several exception types for unusual geometries
        try:
            mol, method = _bonds_from_smiles(smiles, elements, pos), "smiles"
        except Exception:
            mol, method = _connectivity_only(elements, pos), "connectivity"
    n = len(elements)
    src, dst, bond = [], [], []
    for b in mol.GetBonds():
        i, j = b.GetBeginAtomIdx(), b.GetEndAtomIdx()
        kind = BOND_TYPES.get(b.GetBondType())
        if kind is None:
            raise DataError(f"unsupported bond type {b.GetBondType()} in {smiles}")
        src += [i, j]
        dst += [j, i]
        bond += [kind, kind]
    order = np.lexsort((np.array(dst), np.array(src))) if src else np.zeros(0, np.int64)
    src, dst, bond = np.array(src, np.int64)[order], np.array(dst, np.int64)[order], np.array(bond, np.int64)[order]
    node_attr = np.zeros((n, 11), np.float32)
    is_h = np.array([e == "H" for e in elements])
    for a, atom in enumerate(mol.GetAtoms()):
        node_attr[a, ATOM_TYPES[elements[a]]] = 1
        node_attr[a, 5] = ATOMIC_NUMBERS[elements[a]]
        node_attr[a, 6] = atom.GetIsAromatic()
        hyb = atom.GetHybridization()
        node_attr[a, 7:10] = [hyb == Chem.HybridizationType.SP, hyb == Chem.HybridizationType.SP2,
                              hyb == Chem.HybridizationType.SP3]
    np.add.at(node_attr[:, 10], dst, is_h[src].astype(np.float32))  # hydrogens bonded to each atom
    edge_attr = np.eye(4, dtype=np.float32)[bond]
    return node_attr, src, dst, edge_attr, method


def iter_qm9pack_rows(data_dir: Optional[Path] = None) -> Iterable[dict]:
    """CSV rows of all three parts, in QM9 order."""
    data_dir = data_dir or qm9pack_data_dir()
    csv.field_size_limit(1 << 28)
    for name in CSV_FILES:
        with open(data_dir / name, newline="") as handle:
            yield from csv.DictReader(handle)


def read_qm9pack(molecule_ids: Optional[Iterable[int]] = None, data_dir: Optional[Path] = None,
                 progress=None) -> QM9Arrays:
    """Parse the molecules at 0-based positions ``molecule_ids`` (all if None), kept in that order."""
    wanted = None if molecule_ids is None else {int(i): k for k, i in enumerate(molecule_ids)}
    parsed = {}
    rows = iter_qm9pack_rows(data_dir)
    if progress is not None:
        rows = progress(rows, total=NUM_MOLECULES if wanted is None else None)
    RDLogger.DisableLog("rdApp.*")
    methods = {m: 0 for m in BOND_METHODS}
    for position, row in enumerate(rows):
        if wanted is not None and position not in wanted:
            continue
        elements = _literal(row["Elements"])
        pos = np.asarray(_literal(row["XYZ_Ang"]), dtype=np.float64)
        if pos.shape != (len(elements), 3):
            raise DataError(f"qm9pack molecule {row['Index']}: {len(elements)} elements but positions {pos.shape}")
        node_attr, src, dst, edge_attr, method = molecule_graph(elements, pos, row["SMILES"])
        methods[method] += 1
        targets = np.full(len(QM9_TARGETS), np.nan, np.float32)
        for column, (name, factor) in COLUMNS.items():
            targets[QM9_TARGETS.index(name)] = float(row[column]) * factor
        parsed[position] = (node_attr, pos.astype(np.float32), src, dst, edge_attr, targets, int(row["Index"]))
        if wanted is not None and len(parsed) == len(wanted):
            break
    order = list(wanted) if wanted is not None else sorted(parsed)
    missing = [i for i in order if i not in parsed]
    if missing:
        raise DataError(f"molecule positions out of range (QM9 has {NUM_MOLECULES}): {missing[:5]}")
    if methods["smiles"] or methods["connectivity"]:
        warnings.warn(f"QM9 bond perception: {methods} molecules per method (geometry is the primary one)")
    mols = [parsed[i] for i in order]
    return QM9Arrays(n_node=np.array([len(m[0]) for m in mols], np.int64),
                     n_edge=np.array([len(m[2]) for m in mols], np.int64),
                     node_attr=np.concatenate([m[0] for m in mols]), node_pos=np.concatenate([m[1] for m in mols]),
                     edge_attr=np.concatenate([m[4] for m in mols]), src=np.concatenate([m[2] for m in mols]),
                     dst=np.concatenate([m[3] for m in mols]), targets=np.stack([m[5] for m in mols]),
                     qm9_index=np.array([m[6] for m in mols], np.int64))
