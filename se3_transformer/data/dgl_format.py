"""DGL's ``qm9_edge.npz`` format: reader, writer and download.

One file holds all molecules concatenated (the layout of ``dgl.data.QM9EdgeDataset``):

- ``n_node [M]``, ``n_edge [M]``: atoms and directed edges (two per bond) per molecule;
- ``node_attr [sum n_node, 11]``: one-hot H C N O F, atomic number, aromatic, sp, sp2, sp3, num_hs;
- ``node_pos [sum n_node, 3]`` in angstrom;
- ``edge_attr [sum n_edge, 4]``: one-hot single, double, triple, aromatic;
- ``src``, ``dst [sum n_edge]``: atom indices local to each molecule;
- ``targets [M, 19]``: ``QM9_TARGETS`` in DGL's units (energies in eV).
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from runtime.errors import DataError, MissingFileError
from runtime.io import atomic_write, download

DGL_QM9_URL = "https://data.dgl.ai/dataset/qm9_edge.npz"
QM9_TARGETS = ["mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "U0", "U", "H", "G", "Cv",
               "U0_atom", "U_atom", "H_atom", "G_atom", "A", "B", "C"]
QM9_UNITS = {"mu": "D", "alpha": "bohr^3", "homo": "eV", "lumo": "eV", "gap": "eV", "r2": "bohr^2", "zpve": "eV",
             "U0": "eV", "U": "eV", "H": "eV", "G": "eV", "Cv": "cal/mol/K", "U0_atom": "eV", "U_atom": "eV",
             "H_atom": "eV", "G_atom": "eV", "A": "GHz", "B": "GHz", "C": "GHz"}
REQUIRED_KEYS = ("n_node", "n_edge", "node_attr", "node_pos", "edge_attr", "src", "dst", "targets")
NODE_ATTR_DIM, EDGE_ATTR_DIM = 11, 4


@dataclass
class QM9Arrays:
    """All molecules of a QM9 file, concatenated; ``atom_ptr`` / ``edge_ptr`` index each molecule."""

    n_node: np.ndarray
    n_edge: np.ndarray
    node_attr: np.ndarray
    node_pos: np.ndarray
    edge_attr: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    targets: np.ndarray
    qm9_index: Optional[np.ndarray] = None  # original QM9 ids, when known

    def __post_init__(self) -> None:
        self.atom_ptr = np.concatenate([[0], np.cumsum(self.n_node, dtype=np.int64)])
        self.edge_ptr = np.concatenate([[0], np.cumsum(self.n_edge, dtype=np.int64)])
        m = len(self.n_node)
        checks = [(len(self.n_edge) == m, "n_edge has a different length than n_node"),
                  (self.node_attr.shape == (self.atom_ptr[-1], NODE_ATTR_DIM), "node_attr must be [sum(n_node), 11]"),
                  (self.node_pos.shape == (self.atom_ptr[-1], 3), "node_pos must be [sum(n_node), 3]"),
                  (self.edge_attr.shape == (self.edge_ptr[-1], EDGE_ATTR_DIM), "edge_attr must be [sum(n_edge), 4]"),
                  (self.src.shape == self.dst.shape == (self.edge_ptr[-1],), "src/dst must be [sum(n_edge)]"),
                  (self.targets.shape == (m, len(QM9_TARGETS)), f"targets must be [M, {len(QM9_TARGETS)}]")]
        for ok, message in checks:
            if not ok:
                raise DataError(f"malformed QM9 arrays: {message}")
        if len(self.src) and (np.any(self.src >= np.repeat(self.n_node, self.n_edge))
                              or np.any(self.dst >= np.repeat(self.n_node, self.n_edge))):
            raise DataError("malformed QM9 arrays: an edge points past its molecule's atoms")

    def _describe(self, molecule: int) -> str:
        qm9_id = f" (QM9 id {int(self.qm9_index[molecule])})" if self.qm9_index is not None else ""
        return f"molecule {molecule}{qm9_id}"

    def check_values(self) -> None:
        """Refuse non-finite coordinates and edges of zero length, naming the first bad molecule.

        Run once when a file is read, so the model never has to check its inputs on the device.
        """
        bad_atoms = np.flatnonzero(~np.isfinite(self.node_pos).all(axis=1))
        if len(bad_atoms):
            molecule = int(np.searchsorted(self.atom_ptr, bad_atoms[0], side="right") - 1)
            raise DataError(f"{self._describe(molecule)} has non-finite (NaN or infinite) atom coordinates "
                            f"({len(bad_atoms)} atom(s) in all)")
        offsets = np.repeat(self.atom_ptr[:-1], self.n_edge)
        length = np.linalg.norm(self.node_pos[self.dst + offsets] - self.node_pos[self.src + offsets], axis=1)
        bad_edges = np.flatnonzero(~(length > 0))
        if len(bad_edges):
            molecule = int(np.searchsorted(self.edge_ptr, bad_edges[0], side="right") - 1)
            raise DataError(f"{self._describe(molecule)}: an edge joins two atoms at the same position "
                            f"(atoms {int(self.src[bad_edges[0]])} and {int(self.dst[bad_edges[0]])})")

    def __len__(self) -> int:
        return len(self.n_node)

    def subset(self, ids: np.ndarray) -> "QM9Arrays":
        """The molecules ``ids``, in that order."""
        ids = np.asarray(ids, dtype=np.int64)
        atoms = np.concatenate([np.arange(self.atom_ptr[i], self.atom_ptr[i + 1]) for i in ids]) if len(ids) else \
            np.zeros(0, np.int64)
        edges = np.concatenate([np.arange(self.edge_ptr[i], self.edge_ptr[i + 1]) for i in ids]) if len(ids) else \
            np.zeros(0, np.int64)
        return QM9Arrays(self.n_node[ids], self.n_edge[ids], self.node_attr[atoms], self.node_pos[atoms],
                         self.edge_attr[edges], self.src[edges], self.dst[edges], self.targets[ids],
                         None if self.qm9_index is None else self.qm9_index[ids])


def read_qm9_edge(path: str | os.PathLike, rebuild: str = "") -> QM9Arrays:
    """Read and check a ``qm9_edge.npz`` file (DGL's, or one written by ``write_qm9_edge``).

    Every problem is a :class:`~runtime.errors.DataError` naming the file; ``rebuild`` tells the
    user how to get a good copy (appended to the message).
    """
    path = Path(path)
    hint = f"; {rebuild}" if rebuild else ""
    if not path.exists():
        raise MissingFileError(f"QM9 file not found: {path}{hint}")
    if not path.is_file():
        raise DataError(f"{path} is not a regular file{hint}")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in REQUIRED_KEYS if k not in data.files]
            if missing:
                raise DataError(f"{path} is not a qm9_edge.npz file: missing arrays {missing}{hint}")
            arrays = {k: data[k] for k in REQUIRED_KEYS}
            qm9_index = data["qm9_index"] if "qm9_index" in data.files else None
    except PermissionError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err} (check its permissions)") from None
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, KeyError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"cannot read {path} as npz (corrupt or truncated?): "
                        f"{' '.join(str(err).split())[:200]}{hint}") from None
    try:
        result = QM9Arrays(n_node=arrays["n_node"].astype(np.int64), n_edge=arrays["n_edge"].astype(np.int64),
                           node_attr=arrays["node_attr"].astype(np.float32),
                           node_pos=arrays["node_pos"].astype(np.float32),
                           edge_attr=arrays["edge_attr"].astype(np.float32), src=arrays["src"].astype(np.int64),
                           dst=arrays["dst"].astype(np.int64), targets=arrays["targets"].astype(np.float32),
                           qm9_index=qm9_index)
        result.check_values()
    except DataError as err:
        raise DataError(f"{path}: {err}{hint}") from None
    return result


def write_qm9_edge(path: str | os.PathLike, arrays: QM9Arrays) -> None:
    """Write compactly (integer features as uint8) and atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = dict(n_node=arrays.n_node.astype(np.int16), n_edge=arrays.n_edge.astype(np.int16),
                   node_attr=arrays.node_attr.astype(np.uint8), node_pos=arrays.node_pos.astype(np.float32),
                   edge_attr=arrays.edge_attr.astype(np.uint8), src=arrays.src.astype(np.uint8),
                   dst=arrays.dst.astype(np.uint8), targets=arrays.targets.astype(np.float32))
    if arrays.qm9_index is not None:
        payload["qm9_index"] = arrays.qm9_index.astype(np.int32)
    with atomic_write(path) as handle:
        np.savez_compressed(handle, **payload)


def download_qm9_edge(data_dir: str | os.PathLike, url: str = DGL_QM9_URL, sha256: Optional[str] = None,
                      timeout: float = 60.0) -> Path:
    """Download ``qm9_edge.npz`` into ``data_dir`` (skipped if already there) and validate it.

    The download (resumable) is checked (SHA-256 when ``sha256`` is given, and always that it parses
    as a qm9_edge.npz) before it is renamed into place, so a failed download leaves no
    ``qm9_edge.npz``. DGL publishes no checksum for this file; pass ``sha256`` to pin a known copy.
    Any failure is one :class:`~runtime.errors.DataError` saying how to get the file another way.
    """
    dest = Path(data_dir) / "qm9_edge.npz"
    try:
        download(url, dest, sha256=sha256, validate=lambda part: read_qm9_edge(Path(part)), timeout=timeout)
    except (RuntimeError, ValueError) as err:
        raise DataError(f"{' '.join(str(err).split())}. Without internet access, copy DGL's qm9_edge.npz to {dest} "
                        "yourself, or use --dataset qm9pack (offline, from the qm9pack wheel)") from None
    return dest
