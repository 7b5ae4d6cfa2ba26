"""The preprocessed cache (``<name>_kekulized.npz`` + ``<name>_split.json``) and its Dataset."""
import json
import os
from typing import Dict, List, Tuple

import numpy as np
import torch

from moflow.config import NUM_BOND_CHANNELS, DatasetSpec
from moflow.data.encoding import one_hot_atoms, one_hot_bonds
from runtime.io import atomic_write

CACHE_FILE = "{}_kekulized.npz"
SPLIT_FILE = "{}_split.json"


def cache_paths(data_dir: str, name: str) -> Tuple[str, str]:
    return (os.path.join(data_dir, CACHE_FILE.format(name)),
            os.path.join(data_dir, SPLIT_FILE.format(name)))


def save_cache(data_dir: str, name: str, spec: DatasetSpec, smiles: List[str], atoms: np.ndarray,
               bonds: np.ndarray, valid_fraction: float, seed: int) -> Tuple[str, str]:
    """Write the compressed cache and a seeded train/valid split; returns both paths."""
    os.makedirs(data_dir, exist_ok=True)
    npz_path, split_path = cache_paths(data_dir, name)
    with atomic_write(npz_path) as f:
        np.savez_compressed(f, atoms=atoms, bonds=bonds, smiles=np.asarray(smiles),
                            atomic_nums=np.asarray(spec.atomic_nums, dtype=np.int64),
                            max_atoms=np.int64(spec.max_atoms), dataset=np.asarray(spec.name))
    perm = np.random.default_rng(seed).permutation(len(smiles))
    n_valid = int(round(valid_fraction * len(smiles)))
    split = {"seed": seed, "valid": sorted(perm[:n_valid].tolist()),
             "train": sorted(perm[n_valid:].tolist())}
    with atomic_write(split_path, "w", encoding="utf-8") as f:
        json.dump(split, f)
    return npz_path, split_path


class MoleculeCache:
    """Arrays of a preprocessed dataset: atom codes [M, N], bond codes [M, N, N], SMILES."""

    def __init__(self, data_dir: str, name: str):
        npz_path, split_path = cache_paths(data_dir, name)
        for p in (npz_path, split_path):
            if not os.path.exists(p):
                raise FileNotFoundError(
                    f"{p} not found; run `python -m moflow.preprocess --dataset {name} "
                    f"--data_dir {data_dir}` first")
        with np.load(npz_path, allow_pickle=False) as z:
            try:
                self.atoms = z["atoms"]
                self.bonds = z["bonds"]
                self.smiles = [str(s) for s in z["smiles"]]
                atomic_nums = z["atomic_nums"].tolist()
                max_atoms = int(z["max_atoms"])
            except KeyError as err:
                raise ValueError(f"{npz_path} is not a MoFlow cache (missing {err})") from err
        n_nodes = self.atoms.shape[1]
        if self.bonds.shape[1:] != (n_nodes, n_nodes) or len(self.bonds) != len(self.atoms):
            raise ValueError(f"{npz_path}: inconsistent shapes atoms {self.atoms.shape} "
                             f"bonds {self.bonds.shape}")
        self.spec = DatasetSpec(name, atomic_nums, max_atoms=max_atoms, max_nodes=n_nodes)
        with open(split_path) as f:
            split: Dict[str, List[int]] = json.load(f)
        self.train_idx, self.valid_idx = split["train"], split["valid"]
        bad = [i for i in self.train_idx + self.valid_idx if not 0 <= i < len(self.atoms)]
        if bad:
            raise ValueError(f"{split_path} has indices outside [0, {len(self.atoms)}): {bad[:5]}")

    def __len__(self) -> int:
        return len(self.atoms)

    def subset(self, split: str) -> "GraphDataset":
        idx = {"train": self.train_idx, "valid": self.valid_idx, "all": list(range(len(self)))}
        if split not in idx:
            raise ValueError(f"unknown split {split!r}")
        return GraphDataset(self, idx[split])


class GraphDataset(torch.utils.data.Dataset):
    """Items are (atoms one-hot [N, A] float32, adjacency one-hot [4, N, N] float32)."""

    def __init__(self, cache: MoleculeCache, indices: List[int]):
        self.cache = cache
        self.indices = list(indices)
        self.num_atom_channels = cache.spec.num_atom_channels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        k = self.indices[i]
        x = one_hot_atoms(self.cache.atoms[k], self.num_atom_channels)
        adj = one_hot_bonds(self.cache.bonds[k], NUM_BOND_CHANNELS)
        return torch.from_numpy(x), torch.from_numpy(adj)

    def smiles(self) -> List[str]:
        return [self.cache.smiles[k] for k in self.indices]
