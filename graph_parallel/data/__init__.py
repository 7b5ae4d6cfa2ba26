"""OC20 S2EF data: readers for our LMDBs, fairchem's OC20 LMDBs and ASE-LMDBs, ase.db files;
the periodic radius graph and batching. ``open_dataset(path)`` picks the reader for a path."""
from pathlib import Path

from graph_parallel.data.records import FIELDS, NonFiniteDataError, frame_to_tensors, validate_frame
from graph_parallel.data.safe_pickle import load_record
from graph_parallel.data.lmdb_files import close_lmdb_files
from graph_parallel.data.oc20_lmdb import LmdbDataset, write_lmdb
from graph_parallel.data.ase_lmdb import AseLmdbDataset
from graph_parallel.data.ase_db import AseDbDataset, frame_from_atoms
from graph_parallel.data.formats import detect_format, find_split, open_dataset
from graph_parallel.data.radius_graph import radius_graph_pbc
from graph_parallel.data.batch import Collater, S2EFBatch, collate_frames

EMBEDDED_DATA_DIR = Path(__file__).resolve().parent / "emt_small"

__all__ = ["FIELDS", "NonFiniteDataError", "validate_frame", "frame_to_tensors", "load_record", "close_lmdb_files", "LmdbDataset",
           "write_lmdb", "AseLmdbDataset", "AseDbDataset", "frame_from_atoms", "open_dataset", "detect_format",
           "find_split", "radius_graph_pbc", "Collater", "S2EFBatch", "collate_frames", "EMBEDDED_DATA_DIR"]
