"""The preprocessed cache (``<name>_kekulized.npz`` + ``<name>_split.json``) and its Dataset.

=============================  =================================================================
file in ``data_dir``           content
=============================  =================================================================
``<name>_kekulized.npz``       ``atoms`` uint8 [M, N] atom codes, ``bonds`` uint8 [M, N, N] bond
                               codes, ``smiles`` [M] canonical SMILES, ``atomic_nums``,
                               ``max_atoms``, ``dataset``
``<name>_split.json``          ``{"train": [...], "valid": [...], "seed": s}`` indices into the npz
                               (plus ``"valid_idx_file"`` when the split came from such a file)
``<name>_decoded.json``        derived, rebuilt when missing or stale: every graph decoded back to
                               SMILES as generated molecules are (see :meth:`MoleculeCache.decoded_smiles`)
=============================  =================================================================

Reading never creates a directory. A missing npz or split raises ``MissingFileError``, a damaged
one (empty, truncated, not an npz/JSON, missing arrays or keys, inconsistent shapes, codes out of
range, indices out of range) one ``DataError``; both name the file and the preprocess command that
rebuilds it.
"""
import json
import os
import zipfile
import zlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from moflow.chem import graphs_to_smiles
from moflow.config import NO_BOND, NUM_BOND_CHANNELS, DatasetSpec
from moflow.data.encoding import one_hot_atoms, one_hot_bonds
from runtime.errors import DataError, MissingFileError
from runtime.io import atomic_write, sha256_of

CACHE_FILE = "{}_kekulized.npz"
SPLIT_FILE = "{}_split.json"
DECODED_FILE = "{}_decoded.json"
_NPZ_KEYS = ("atoms", "bonds", "smiles", "atomic_nums", "max_atoms")


def cache_paths(data_dir: str, name: str) -> Tuple[str, str]:
    return (os.path.join(data_dir, CACHE_FILE.format(name)),
            os.path.join(data_dir, SPLIT_FILE.format(name)))


def rebuild_hint(data_dir: str, name: str) -> str:
    return (f"rerun `python -m moflow.preprocess --dataset {name} --data_dir {data_dir}` "
            f"(with the --csv/--download/--valid_idx flags used to build it)")


def save_cache(data_dir: str, name: str, spec: DatasetSpec, smiles: List[str], atoms: np.ndarray,
               bonds: np.ndarray, valid_fraction: float, seed: int,
               valid_idx: Optional[Sequence[int]] = None, valid_idx_file: Optional[str] = None
               ) -> Tuple[str, str]:
    """Write the compressed cache and the train/valid split; returns both paths.

    The split is seeded (``valid_fraction`` of the molecules) unless ``valid_idx`` gives the
    validation molecules as indices into ``smiles`` (a held-out split file such as MoFlow's
    ``valid_idx_zinc.json``, mapped to cache indices by the caller).
    """
    os.makedirs(data_dir, exist_ok=True)
    npz_path, split_path = cache_paths(data_dir, name)
    with atomic_write(npz_path) as f:
        np.savez_compressed(f, atoms=atoms, bonds=bonds, smiles=np.asarray(smiles),
                            atomic_nums=np.asarray(spec.atomic_nums, dtype=np.int64),
                            max_atoms=np.int64(spec.max_atoms), dataset=np.asarray(spec.name))
    if valid_idx is None:
        perm = np.random.default_rng(seed).permutation(len(smiles))
        n_valid = int(round(valid_fraction * len(smiles)))
        split = {"seed": seed, "valid": sorted(perm[:n_valid].tolist()),
                 "train": sorted(perm[n_valid:].tolist())}
    else:
        valid = sorted({int(i) for i in valid_idx})
        if valid and not 0 <= valid[0] <= valid[-1] < len(smiles):
            raise ValueError(f"valid_idx outside [0, {len(smiles)})")
        held = set(valid)
        split = {"seed": seed, "valid": valid, "train": [i for i in range(len(smiles)) if i not in held],
                 "valid_idx_file": valid_idx_file}
    with atomic_write(split_path, "w", encoding="utf-8") as f:
        json.dump(split, f)
    return npz_path, split_path


def _load_npz(path: str, fix: str) -> Dict[str, np.ndarray]:
    if not os.path.isfile(path):
        raise MissingFileError(f"{path} not found; {fix}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except EOFError as err:
        raise DataError(f"{path} is empty; {fix}") from err
    except zipfile.BadZipFile as err:
        raise DataError(f"{path} is truncated or not an npz archive ({err}); {fix}") from err
    except (ValueError, OSError) as err:
        raise DataError(f"{path} is not a MoFlow npz cache ({err}); {fix}") from err
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise DataError(f"{path} holds a single .npy array, not a MoFlow npz cache; {fix}")
    with loaded as z:
        missing = [k for k in _NPZ_KEYS if k not in z.files]
        if missing:
            raise DataError(f"{path} is not a MoFlow cache: missing arrays {missing} (has {z.files}); {fix}")
        try:
            return {k: z[k] for k in _NPZ_KEYS}
        except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as err:
            raise DataError(f"{path} is damaged: an array cannot be read ({err}); {fix}") from err


def _check_arrays(path: str, arrays: Dict[str, np.ndarray], fix: str) -> None:
    atoms, bonds, smiles, atomic_nums = (arrays[k] for k in ("atoms", "bonds", "smiles", "atomic_nums"))
    problem = None
    if atoms.ndim != 2 or not np.issubdtype(atoms.dtype, np.integer):
        problem = f"atoms must be integer codes [M, N], got {atoms.dtype} {atoms.shape}"
    elif bonds.shape != (len(atoms), atoms.shape[1], atoms.shape[1]) or not np.issubdtype(bonds.dtype, np.integer):
        problem = f"inconsistent shapes atoms {atoms.shape} bonds {bonds.shape} ({bonds.dtype})"
    elif smiles.shape != (len(atoms),):
        problem = f"{smiles.shape[0] if smiles.ndim else 0} SMILES for {len(atoms)} molecules"
    elif atomic_nums.ndim != 1 or not np.issubdtype(atomic_nums.dtype, np.integer) or not len(atomic_nums):
        problem = f"atomic_nums must be a list of atomic numbers, got {atomic_nums}"
    elif atoms.size and (atoms.min() < 0 or atoms.max() > len(atomic_nums)):
        problem = f"atom codes outside [0, {len(atomic_nums)}]"
    elif bonds.size and (bonds.min() < 0 or bonds.max() > NO_BOND):
        problem = f"bond codes outside [0, {NO_BOND}]"
    if problem:
        raise DataError(f"{path} is not a valid MoFlow cache: {problem}; {fix}")


def _load_split(path: str, n: int, fix: str) -> Tuple[List[int], List[int]]:
    if not os.path.isfile(path):
        raise MissingFileError(f"{path} not found; {fix}")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise DataError(f"{path} cannot be read ({err}); {fix}") from err
    if not raw.strip():
        raise DataError(f"{path} is empty; {fix}")
    try:
        split = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path} is not valid JSON (truncated?): {err}; {fix}") from err
    lists = []
    for key in ("train", "valid"):
        value = split.get(key) if isinstance(split, dict) else None
        if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
            raise DataError(f"{path} is not a MoFlow split: {key!r} must be a list of molecule indices; {fix}")
        lists.append(value)
    train, valid = lists
    bad = [i for i in train + valid if not 0 <= i < n]
    if bad:
        raise DataError(f"{path} has indices outside [0, {n}): {bad[:5]} (split of another cache?); {fix}")
    if set(train) & set(valid):
        raise DataError(f"{path}: {len(set(train) & set(valid))} molecules are in both train and valid; {fix}")
    return train, valid


class MoleculeCache:
    """Arrays of a preprocessed dataset: atom codes [M, N], bond codes [M, N, N], SMILES."""

    def __init__(self, data_dir: str, name: str):
        self.data_dir, self.name = data_dir, name
        npz_path, split_path = cache_paths(data_dir, name)
        self.npz_path = npz_path
        fix = rebuild_hint(data_dir, name)
        arrays = _load_npz(npz_path, fix)
        _check_arrays(npz_path, arrays, fix)
        self.atoms, self.bonds = arrays["atoms"], arrays["bonds"]
        self.smiles = [str(s) for s in arrays["smiles"]]
        n_nodes = self.atoms.shape[1]
        self.spec = DatasetSpec(name, arrays["atomic_nums"].tolist(), max_atoms=int(arrays["max_atoms"]),
                                max_nodes=n_nodes)
        self.train_idx, self.valid_idx = _load_split(split_path, len(self.atoms), fix)
        self._decoded: Optional[List[Optional[str]]] = None
        self.decode_workers = 0  # decoded_smiles: processes for a first decoding (0: one per CPU)

    def __len__(self) -> int:
        return len(self.atoms)

    def indices(self, split: str) -> List[int]:
        idx = {"train": self.train_idx, "valid": self.valid_idx, "all": list(range(len(self)))}
        if split not in idx:
            raise ValueError(f"unknown split {split!r}")
        return idx[split]

    def subset(self, split: str) -> "GraphDataset":
        return GraphDataset(self, self.indices(split))

    def decoded_smiles(self, split: str = "all", save: bool = True) -> List[Optional[str]]:
        """Every graph of ``split`` decoded back to SMILES exactly as generated molecules are.

        This is the representation the model can produce: stereochemistry, explicit charges
        (other than the N+/O+/S+ the decoder derives) and isotopes are gone. Novelty must compare
        generated molecules with these, not with the source SMILES. None marks a graph that does
        not decode to a valid molecule. Decoding costs about 0.5 ms per molecule on one core
        (large caches use ``decode_workers`` processes, default one per CPU), so the result is
        kept in ``<name>_decoded.json`` beside the cache, keyed by the npz's SHA-256
        (``save=False`` or a read-only directory skips the file).
        """
        if self._decoded is None:
            self._decoded = self._load_or_decode(save)
        return [self._decoded[i] for i in self.indices(split)]

    def _load_or_decode(self, save: bool) -> List[Optional[str]]:
        path = os.path.join(self.data_dir, DECODED_FILE.format(self.name))
        digest = sha256_of(self.npz_path)
        try:
            with open(path, encoding="utf-8") as f:
                stored = json.load(f)
            if stored.get("npz_sha256") == digest and len(stored.get("smiles", [])) == len(self):
                return stored["smiles"]
        except (OSError, ValueError, AttributeError):
            pass  # missing, stale or damaged derived file: decode again
        decoded = graphs_to_smiles(self.atoms, self.bonds, self.spec.atomic_nums, correct=False,
                                   workers=self.decode_workers)
        if save:
            try:
                with atomic_write(path, "w", encoding="utf-8") as f:
                    json.dump({"npz_sha256": digest, "smiles": decoded}, f)
            except OSError:
                pass  # read-only data directory: keep the result in memory only
        return decoded


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
        """The canonical source SMILES (with stereochemistry and charges, as read)."""
        return [self.cache.smiles[k] for k in self.indices]

    def decoded_smiles(self) -> List[Optional[str]]:
        """The graphs decoded as generated molecules are (see :meth:`MoleculeCache.decoded_smiles`)."""
        decoded = self.cache.decoded_smiles("all")
        return [decoded[k] for k in self.indices]
