"""QM9 for the SE(3)-Transformer: sources, the reference split, and batches of molecular graphs.

Sources (all end up as ``QM9Arrays`` in DGL's qm9_edge layout):
- ``sample``: 2,000 molecules embedded in this package (``qm9_sample.npz``), the offline default;
- ``qm9pack``: the full 130,831 molecules parsed from the qm9pack wheel (cached as npz in data_dir);
- ``dgl``: DGL's ``qm9_edge.npz`` in data_dir, downloaded from data.dgl.ai if absent.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from runtime.graph import GraphBatch
from se3_transformer.data.dgl_format import QM9_TARGETS, QM9Arrays, download_qm9_edge, read_qm9_edge, \
    write_qm9_edge
from se3_transformer.data.qm9pack_source import NUM_MOLECULES, read_qm9pack
from se3_transformer.model.basis import compute_basis

SAMPLE_PATH = Path(__file__).with_name("qm9_sample.npz")
SOURCES = ("sample", "qm9pack", "dgl")
SPLIT = (100_000, 17_748, 13_083)  # train / val / test on the full 130,831 molecules
NODE_FEATURE_DIM, EDGE_FEATURE_DIM = 6, 4  # one-hot H C N O F + protons; single double triple aromatic


def subset_ids(total: int, num_molecules: Optional[int], seed: int = 0) -> np.ndarray:
    """A random (seeded) subset of ``num_molecules`` positions, nested for growing sizes; all if None."""
    if num_molecules is None or num_molecules >= total:
        return np.arange(total)
    if num_molecules < 10:
        raise ValueError(f"num_molecules must be >= 10, got {num_molecules}")
    return np.sort(np.random.default_rng(seed).permutation(total)[:num_molecules])


def load_qm9(source: str = "sample", data_dir: str | Path = "data_cache/se3_transformer",
             num_molecules: Optional[int] = None, progress=None) -> QM9Arrays:
    """Load QM9 from ``source`` (see module doc), optionally a seeded subset of ``num_molecules``."""
    if source == "sample":
        arrays = read_qm9_edge(SAMPLE_PATH)
        return arrays if num_molecules is None else arrays.subset(np.arange(min(num_molecules, len(arrays))))
    if source == "dgl":
        arrays = read_qm9_edge(download_qm9_edge(data_dir))
        return arrays.subset(subset_ids(len(arrays), num_molecules))
    if source == "qm9pack":
        tag = "all" if num_molecules is None or num_molecules >= NUM_MOLECULES else str(num_molecules)
        cache = Path(data_dir) / f"qm9pack_{tag}.npz"
        if cache.is_file():
            return read_qm9_edge(cache)
        arrays = read_qm9pack(subset_ids(NUM_MOLECULES, num_molecules), progress=progress)
        write_qm9_edge(cache, arrays)
        return read_qm9_edge(cache)  # same dtypes whether cached or fresh
    raise ValueError(f"unknown QM9 source {source!r}; choose from {SOURCES}")


def split_indices(num: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random train/val/test split 100,000 / 17,748 / 13,083 (scaled to ``num``), torch-seeded."""
    train = int(round(num * SPLIT[0] / NUM_MOLECULES))
    val = int(round(num * SPLIT[1] / NUM_MOLECULES))
    perm = torch.randperm(num, generator=torch.Generator().manual_seed(seed)).numpy()
    return perm[:train], perm[train:train + val], perm[train + val:]


def task_column(task: str) -> int:
    if task not in QM9_TARGETS:
        raise ValueError(f"unknown task {task!r}; choose from {QM9_TARGETS}")
    return QM9_TARGETS.index(task)


def relative_positions(arrays: QM9Arrays) -> torch.Tensor:
    """``pos[dst] - pos[src]`` for every edge of every molecule, ``[sum n_edge, 3]``."""
    offsets = np.repeat(arrays.atom_ptr[:-1], arrays.n_edge)
    pos = torch.from_numpy(arrays.node_pos)
    return pos[torch.from_numpy(arrays.dst + offsets)] - pos[torch.from_numpy(arrays.src + offsets)]


def precompute_bases(arrays: QM9Arrays, max_degree: int, chunk: int = 65536) -> Dict:
    """Pairwise bases of every edge of ``arrays`` (``--precompute_bases``), computed in chunks."""
    rel_pos = relative_positions(arrays)
    parts = [compute_basis(rel_pos[i:i + chunk], max_degree) for i in range(0, len(rel_pos), chunk)]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


class QM9GraphDataset(Dataset):
    """Molecules ``ids`` of ``arrays`` for one target. Items are molecule positions; ``collate`` builds batches.

    ``bases`` (from ``precompute_bases``, shared by all splits) are gathered per batch instead of
    being recomputed in every forward pass.
    """

    def __init__(self, arrays: QM9Arrays, ids: np.ndarray, task: str = "homo", bases: Optional[Dict] = None):
        self.arrays, self.ids, self.task, self.bases = arrays, np.asarray(ids, np.int64), task, bases
        self.targets = arrays.targets[:, task_column(task)]
        if len(self.ids) == 0:
            raise ValueError("QM9GraphDataset got no molecules (is the dataset too small for the split?)")
        if np.isnan(self.targets[self.ids]).any():
            raise ValueError(f"target {task!r} is missing (NaN) for some molecules of this source")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> int:
        return int(self.ids[index])

    def _atoms_edges(self, mols: np.ndarray):
        a = self.arrays
        atoms = np.concatenate([np.arange(a.atom_ptr[m], a.atom_ptr[m + 1]) for m in mols])
        edges = np.concatenate([np.arange(a.edge_ptr[m], a.edge_ptr[m + 1]) for m in mols])
        return atoms, edges

    def collate(self, mols) -> Tuple[GraphBatch, Optional[Dict]]:
        """One disjoint graph for molecules ``mols`` (+ their precomputed bases, if any)."""
        a = self.arrays
        mols = np.asarray(mols, np.int64)
        atoms, edges = self._atoms_edges(mols)
        n_node, n_edge = a.n_node[mols], a.n_edge[mols]
        ptr = np.concatenate([[0], np.cumsum(n_node)])
        shift = np.repeat(ptr[:-1], n_edge)
        edge_index = np.stack([a.src[edges] + shift, a.dst[edges] + shift])
        batch = GraphBatch(pos=torch.from_numpy(a.node_pos[atoms]), edge_index=torch.from_numpy(edge_index),
                           batch=torch.from_numpy(np.repeat(np.arange(len(mols)), n_node)),
                           ptr=torch.from_numpy(ptr),
                           node_feats=torch.from_numpy(a.node_attr[atoms, :NODE_FEATURE_DIM]),
                           edge_feats=torch.from_numpy(a.edge_attr[edges]),
                           y=torch.from_numpy(self.targets[mols]))
        basis = None
        if self.bases is not None:
            idx = torch.from_numpy(edges)
            basis = {k: v.index_select(0, idx) for k, v in self.bases.items()}
        return batch, basis
