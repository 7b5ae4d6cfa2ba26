"""QM9 for the SE(3)-Transformer: datasets, the reference split, and batches of molecular graphs.

Datasets (``--dataset``; all end up as ``QM9Arrays`` in DGL's qm9_edge layout):

===========  ==========================================================================================
``sample``   1,000 molecules embedded in this package (``qm9_sample.npz``), the offline default;
             ``--data_dir`` is not used
``qm9pack``  the 130,831 molecules of the qm9pack wheel, parsed once and cached as
             ``DATA_DIR/qm9pack_{all|N}.npz``
``dgl``      DGL's ``DATA_DIR/qm9_edge.npz``, downloaded from data.dgl.ai when absent
===========  ==========================================================================================

``--data_dir`` is only written to when a cache or a download is needed. A missing directory is then
created only when its parent exists, or when it is the recipe's default location (so a mistyped
path fails with one message and nothing is created). Every file read is checked: damaged files,
non-finite coordinates and zero-length edges are :class:`~runtime.errors.DataError` naming the
file, the molecule and how to get a good copy.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from runtime.errors import ConfigError, DataError, MissingFileError
from runtime.graph import GraphBatch
from runtime.io import ensure_writable_dir
from se3_transformer.data.dgl_format import QM9_TARGETS, QM9Arrays, download_qm9_edge, read_qm9_edge, \
    write_qm9_edge
from se3_transformer.data.qm9pack_source import NUM_MOLECULES, read_qm9pack
from se3_transformer.model.basis import compute_basis
from se3_transformer.model.pairing import pair_reverse_edges

SAMPLE_PATH = Path(__file__).with_name("qm9_sample.npz")
DATASETS = ("sample", "qm9pack", "dgl")
DEFAULT_DATA_DIR = "data/se3_transformer"
SPLIT = (100_000, 17_748, 13_083)  # train / val / test on the full 130,831 molecules
SPLITS = ("train", "val", "test")
NODE_FEATURE_DIM, EDGE_FEATURE_DIM = 6, 4  # one-hot H C N O F + protons; single double triple aromatic


def subset_ids(total: int, num_molecules: Optional[int], seed: int = 0) -> np.ndarray:
    """A random (seeded) subset of ``num_molecules`` positions, nested for growing sizes; all if None."""
    if num_molecules is None or num_molecules >= total:
        return np.arange(total)
    if num_molecules < 10:
        raise ConfigError(f"--num_molecules must be >= 10, got {num_molecules}")
    return np.sort(np.random.default_rng(seed).permutation(total)[:num_molecules])


def prepare_data_dir(data_dir: str | Path, purpose: str, create_parents: bool = False) -> Path:
    """Make ``data_dir`` ready to be written to for ``purpose``; see the module doc for when it is created."""
    path = Path(data_dir)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--data_dir {path} exists but is not a directory")
    if not path.exists():
        parent = path.absolute().parent
        if not create_parents and not parent.is_dir():
            raise MissingFileError(f"--data_dir {path} does not exist and neither does its parent {parent}, so "
                                   f"nothing was created; {purpose}. Create it first (mkdir -p {path}) or fix "
                                   "the path")
    ensure_writable_dir(path, "--data_dir")
    return path


def load_qm9(dataset: str = "sample", data_dir: str | Path = DEFAULT_DATA_DIR,
             num_molecules: Optional[int] = None, progress=None, create_parents: bool = False) -> QM9Arrays:
    """Load QM9 from ``dataset`` (see the module doc), optionally a seeded subset of ``num_molecules``.

    ``create_parents``: ``data_dir`` may be created with missing parents (the default location).
    """
    if dataset == "sample":
        arrays = read_qm9_edge(SAMPLE_PATH, rebuild="the embedded sample is damaged: reinstall molrecipes or "
                                                    "regenerate it with `python -m se3_transformer.data.make_sample`")
        return arrays if num_molecules is None else arrays.subset(np.arange(min(num_molecules, len(arrays))))
    if dataset == "dgl":
        path = Path(data_dir) / "qm9_edge.npz"
        if not path.exists():
            prepare_data_dir(data_dir, "--dataset dgl would download qm9_edge.npz into it", create_parents)
            download_qm9_edge(data_dir)
        arrays = read_qm9_edge(path, rebuild="delete it and run again to download it again, or copy DGL's "
                                             "qm9_edge.npz there")
        return arrays.subset(subset_ids(len(arrays), num_molecules))
    if dataset == "qm9pack":
        tag = "all" if num_molecules is None or num_molecules >= NUM_MOLECULES else str(num_molecules)
        cache = Path(data_dir) / f"qm9pack_{tag}.npz"
        rebuild = "it is a cache: delete it and run again to rebuild it from the qm9pack wheel"
        if not cache.exists():
            prepare_data_dir(data_dir, "--dataset qm9pack would cache the parsed molecules in it", create_parents)
            arrays = read_qm9pack(subset_ids(NUM_MOLECULES, num_molecules), progress=progress)
            write_qm9_edge(cache, arrays)
        return read_qm9_edge(cache, rebuild=rebuild)  # same dtypes whether cached or fresh
    raise ConfigError(f"unknown dataset {dataset!r}; choose from {DATASETS}")


def split_indices(num: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random train/val/test split 100,000 / 17,748 / 13,083 (scaled to ``num``), torch-seeded."""
    train = int(round(num * SPLIT[0] / NUM_MOLECULES))
    val = int(round(num * SPLIT[1] / NUM_MOLECULES))
    perm = torch.randperm(num, generator=torch.Generator().manual_seed(seed)).numpy()
    return perm[:train], perm[train:train + val], perm[train + val:]


def task_column(task: str) -> int:
    if task not in QM9_TARGETS:
        raise ConfigError(f"unknown task {task!r}; choose from {QM9_TARGETS}")
    return QM9_TARGETS.index(task)


def relative_positions(arrays: QM9Arrays) -> torch.Tensor:
    """``pos[dst] - pos[src]`` for every edge of every molecule, ``[sum n_edge, 3]``."""
    offsets = np.repeat(arrays.atom_ptr[:-1], arrays.n_edge)
    pos = torch.from_numpy(arrays.node_pos)
    return pos[torch.from_numpy(arrays.dst + offsets)] - pos[torch.from_numpy(arrays.src + offsets)]


def basis_bytes_per_edge(max_degree: int, dtype: torch.dtype = torch.float32) -> int:
    """Memory of one edge's pairwise bases: ``sum_{l,k} (2l+1)(2 min(l,k)+1)(2k+1)`` values."""
    values = sum((2 * l + 1) * (2 * min(l, k) + 1) * (2 * k + 1)
                 for l in range(max_degree + 1) for k in range(max_degree + 1))
    return values * torch.empty((), dtype=dtype).element_size()


def precompute_bases(arrays: QM9Arrays, max_degree: int, chunk: int = 65536, report=None) -> Dict:
    """Pairwise bases of every edge of ``arrays`` (``--precompute_bases``), computed in chunks.

    The cache holds ``basis_bytes_per_edge`` per directed edge in host memory (shared by all splits;
    loader workers share it copy-on-write); ``report`` (e.g. ``print``) receives that estimate before
    anything is computed. The other edge inputs (relative position, length, bond one-hot) are a few
    values per edge and cost well under 1 % of a step, so they are not cached.
    """
    num_edges = int(arrays.n_edge.sum())
    if report is not None:
        per_edge = basis_bytes_per_edge(max_degree)
        report(f"--precompute_bases: {num_edges:,} edges x {per_edge:,} bytes (float32, degrees 0-{max_degree}) "
               f"= {num_edges * per_edge / 2 ** 20:,.1f} MB of host memory for the basis cache")
    rel_pos = relative_positions(arrays)
    parts = [compute_basis(rel_pos[i:i + chunk], max_degree) for i in range(0, len(rel_pos), chunk)]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


@dataclass
class MoleculeBatch:
    """A collated batch: one disjoint graph and, with ``--precompute_bases``, its edges' bases.

    ``pin_memory`` lets the DataLoader pin it (CUDA), so ``to(device, non_blocking=True)`` overlaps
    the copy with compute.
    """

    graph: GraphBatch
    basis: Optional[Dict[str, Tensor]] = None

    @property
    def num_graphs(self) -> int:
        return self.graph.num_graphs

    def _map(self, fn) -> "MoleculeBatch":
        graph = replace(self.graph, **{f.name: fn(getattr(self.graph, f.name)) for f in fields(self.graph)
                                       if isinstance(getattr(self.graph, f.name), Tensor)})
        basis = None if self.basis is None else {k: fn(v) for k, v in self.basis.items()}
        return MoleculeBatch(graph, basis)

    def pin_memory(self) -> "MoleculeBatch":
        return self._map(lambda t: t.pin_memory())

    def to(self, device, non_blocking: bool = False) -> "MoleculeBatch":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))


class QM9GraphDataset(Dataset):
    """Molecules ``ids`` of ``arrays`` for one target. Items are molecule positions; ``collate`` builds batches.

    ``bases`` (from ``precompute_bases``, shared by all splits) are gathered per batch instead of
    being recomputed in every forward pass.
    """

    def __init__(self, arrays: QM9Arrays, ids: np.ndarray, task: str = "homo", bases: Optional[Dict] = None,
                 split: str = "this split"):
        self.arrays, self.ids, self.task, self.bases = arrays, np.asarray(ids, np.int64), task, bases
        self.targets = arrays.targets[:, task_column(task)]
        if len(self.ids) == 0:
            raise ConfigError(f"the {split} split has no molecules: {len(arrays)} molecules are too few "
                              "(raise --num_molecules)")
        if np.isnan(self.targets[self.ids]).any():
            raise DataError(f"target {task!r} is missing (NaN) for some molecules of this dataset "
                            "(qm9pack has no *_atom targets: use --dataset dgl for them)")

    @property
    def split_targets(self) -> np.ndarray:
        """Targets of this dataset's molecules, in order."""
        return self.targets[self.ids]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> int:
        return int(self.ids[index])

    def _atoms_edges(self, mols: np.ndarray):
        a = self.arrays
        atoms = np.concatenate([np.arange(a.atom_ptr[m], a.atom_ptr[m + 1]) for m in mols])
        edges = np.concatenate([np.arange(a.edge_ptr[m], a.edge_ptr[m + 1]) for m in mols])
        return atoms, edges

    def collate(self, mols) -> MoleculeBatch:
        """One disjoint graph for molecules ``mols`` (+ their precomputed bases, if any), its edges
        ordered for reverse-edge sharing (a ``PairedGraphBatch``) whenever every bond has its twin."""
        a = self.arrays
        mols = np.asarray(mols, np.int64)
        atoms, edges = self._atoms_edges(mols)
        n_node, n_edge = a.n_node[mols], a.n_edge[mols]
        ptr = np.concatenate([[0], np.cumsum(n_node)])
        shift = np.repeat(ptr[:-1], n_edge)
        edge_index = np.stack([a.src[edges] + shift, a.dst[edges] + shift])
        graph = GraphBatch(pos=torch.from_numpy(a.node_pos[atoms]), edge_index=torch.from_numpy(edge_index),
                           batch=torch.from_numpy(np.repeat(np.arange(len(mols)), n_node)),
                           ptr=torch.from_numpy(ptr),
                           node_feats=torch.from_numpy(a.node_attr[atoms, :NODE_FEATURE_DIM]),
                           edge_feats=torch.from_numpy(a.edge_attr[edges]),
                           y=torch.from_numpy(self.targets[mols]))
        graph, perm = pair_reverse_edges(graph)
        basis = None
        if self.bases is not None:
            idx = torch.from_numpy(edges) if perm is None else torch.from_numpy(edges)[perm]
            basis = {k: v.index_select(0, idx) for k, v in self.bases.items()}
        return MoleculeBatch(graph, basis)
