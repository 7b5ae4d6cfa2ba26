"""OC20 S2EF data: LMDB reader/writer, ASE database reader, periodic radius graph, batching."""
from pathlib import Path

from .oc20_lmdb import FIELDS, LmdbDataset, validate_frame, write_lmdb
from .ase_db import AseDbDataset, frame_from_atoms
from .radius_graph import radius_graph_pbc
from .batch import Collater, S2EFBatch, collate_frames

EMBEDDED_DATA_DIR = Path(__file__).resolve().parent / "emt_small"

__all__ = ["FIELDS", "LmdbDataset", "validate_frame", "write_lmdb", "AseDbDataset", "frame_from_atoms",
           "radius_graph_pbc", "Collater", "S2EFBatch", "collate_frames", "EMBEDDED_DATA_DIR"]
