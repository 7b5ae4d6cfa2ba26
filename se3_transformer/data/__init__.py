"""QM9 data: qm9pack CSVs, DGL's qm9_edge.npz, the embedded sample, split and batching."""
from se3_transformer.data.dgl_format import QM9_TARGETS, QM9_UNITS, QM9Arrays, download_qm9_edge, read_qm9_edge, \
    write_qm9_edge
from se3_transformer.data.qm9 import DATASETS, DEFAULT_DATA_DIR, EDGE_FEATURE_DIM, NODE_FEATURE_DIM, SPLITS, \
    MoleculeBatch, QM9GraphDataset, load_qm9, precompute_bases, split_indices

__all__ = ["QM9_TARGETS", "QM9_UNITS", "QM9Arrays", "download_qm9_edge", "read_qm9_edge", "write_qm9_edge",
           "DATASETS", "DEFAULT_DATA_DIR", "EDGE_FEATURE_DIM", "NODE_FEATURE_DIM", "SPLITS", "MoleculeBatch",
           "QM9GraphDataset", "load_qm9", "precompute_bases", "split_indices"]
