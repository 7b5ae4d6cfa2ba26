"""fairchem's data formats, written by genuine writers, read back by the project's own readers.

- OC20 S2EF LMDBs of pickled ``torch_geometric.data.Data`` in both PyG layouts: PyG >= 2.0
  (``Data._store``, pickled by torch_geometric itself) and PyG < 2.0 (fields in ``Data.__dict__``
  beside PyG 1.x's ``None`` attributes, pickled as PyG 1.x did: NEWOBJ of
  ``torch_geometric.data.data.Data`` + BUILD of that dict), as shards ``data.0000.lmdb``, ...
- fairchem ASE-LMDBs (``*.aselmdb``), written by ase-db-backends' LMDBDatabase (what fairchem uses
  now, through ``ase.db.connect``) and by a small writer of fairchem 1.x's orjson-list encoding.
Every frame is compared field by field with the source values and with what PyG / ASE load.
"""
import copyreg
import io
import json
import os
import pickle
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch

with warnings.catch_warnings():                 # torch_geometric's import warns about torch.jit.script
    warnings.simplefilter("ignore", DeprecationWarning)
    from torch_geometric.data import Data

from graph_parallel.data import (AseDbDataset, AseLmdbDataset, LmdbDataset, detect_format, find_split, open_dataset,
                                 write_lmdb)
from runtime.errors import DataError, MissingFileError

ROOT = Path(__file__).resolve().parents[2]
PYG1_NONE_ATTRIBUTES = ("x", "edge_index", "edge_attr", "y", "pos", "normal", "face")


def source_frames(seed, sizes, sid0=0):
    rng = np.random.default_rng(seed)
    frames = []
    for i, n in enumerate(sizes):
        cell = np.diag(rng.uniform(6, 9, 3)) + np.triu(rng.uniform(-1, 1, (3, 3)), 1)
        frames.append({"pos": rng.uniform(0, 6, (n, 3)).astype(np.float32), "cell": cell.astype(np.float32),
                       "atomic_numbers": rng.integers(1, 84, n), "natoms": n, "tags": rng.integers(0, 3, n),
                       "fixed": rng.integers(0, 2, n), "energy": float(rng.normal(-50, 10)),
                       "forces": rng.normal(size=(n, 3)).astype(np.float32), "sid": sid0 + i, "fid": 7 * i})
    return frames


def pyg1_record(frame):
    """The __dict__ of an OC20 Data as ocp's AtomsToGraphs + preprocess_ef built it under PyG 1.x."""
    state = dict.fromkeys(PYG1_NONE_ATTRIBUTES)
    state.update(cell=torch.tensor(frame["cell"]).view(1, 3, 3), pos=torch.tensor(frame["pos"]),
                 atomic_numbers=torch.tensor(frame["atomic_numbers"], dtype=torch.float32),
                 natoms=len(frame["pos"]))
    state["y"] = np.float64(frame["energy"])                  # ase returns numpy floats
    state.update(force=torch.tensor(frame["forces"]), fixed=torch.tensor(frame["fixed"], dtype=torch.float32),
                 tags=torch.LongTensor(frame["tags"]), sid=frame["sid"], fid=frame["fid"])
    return state


def pyg2_record(frame):
    """A Data as fairchem's current AtomsToGraphs builds it (PyG >= 2.0), with extra fields."""
    n = len(frame["pos"])
    return Data(pos=torch.tensor(frame["pos"]), cell=torch.tensor(frame["cell"]).view(1, 3, 3),
                atomic_numbers=torch.tensor(frame["atomic_numbers"], dtype=torch.uint8), natoms=n,
                tags=torch.tensor(frame["tags"], dtype=torch.int), fixed=torch.tensor(frame["fixed"], dtype=torch.int),
                energy=frame["energy"], forces=torch.tensor(frame["forces"]), sid=torch.LongTensor([frame["sid"]]),
                fid=torch.LongTensor([frame["fid"]]), pbc=torch.tensor([True, True, True]),
                stress=torch.zeros(1, 3, 3), edge_index=torch.zeros(2, 0, dtype=torch.long))


class Pyg1Pickler(pickle.Pickler):
    """Pickles a Data whose fields sit in __dict__ the way PyG 1.x did: its Data had no __reduce__
    or __getstate__ of its own, so pickle wrote NEWOBJ of the class, then BUILD with the __dict__."""

    def reducer_override(self, obj):
        if type(obj) is Data and "_store" not in obj.__dict__:
            return copyreg.__newobj__, (Data,), dict(obj.__dict__)
        return NotImplemented


def pickle_pyg1(state):
    legacy = Data.__new__(Data)                            # a PyG 1.x object: no _store, fields in __dict__
    legacy.__dict__.update(state)
    out = io.BytesIO()
    Pyg1Pickler(out, protocol=pickle.HIGHEST_PROTOCOL).dump(legacy)
    return out.getvalue()


def write_raw_lmdb(path, values, length=True):
    env = lmdb.open(str(path), subdir=False, map_size=1 << 26, lock=False)
    with env.begin(write=True) as txn:
        for i, value in enumerate(values):
            txn.put(str(i).encode("ascii"), value)
        if length:
            txn.put(b"length", pickle.dumps(len(values), protocol=pickle.HIGHEST_PROTOCOL))
    env.close()


def assert_same_frame(got, frame):
    np.testing.assert_array_equal(got["pos"], frame["pos"])
    np.testing.assert_array_equal(got["forces"], frame["forces"])
    np.testing.assert_array_equal(got["cell"][0], frame["cell"])
    for name in ("atomic_numbers", "tags", "fixed"):
        assert got[name].tolist() == list(frame[name]), name
    assert got["natoms"] == len(frame["pos"])
    assert got["energy"] == pytest.approx(frame["energy"], rel=0, abs=1e-12)
    assert (got["sid"], got["fid"]) == (frame["sid"], frame["fid"])


def assert_same_as_pyg(got, data):
    """Our record against the Data torch_geometric itself unpickled (fields under either name)."""
    for ours, theirs in (("pos", "pos"), ("cell", "cell"), ("atomic_numbers", "atomic_numbers"), ("tags", "tags"),
                         ("fixed", "fixed"), ("natoms", "natoms"), ("sid", "sid"), ("fid", "fid")):
        np.testing.assert_array_equal(np.asarray(got[ours]).reshape(-1),
                                      torch.as_tensor(data[theirs]).reshape(-1).numpy().astype(np.asarray(got[ours]).dtype))
    energy = data["energy"] if "energy" in data else data["y"]
    forces = data["forces"] if "forces" in data else data["force"]
    assert got["energy"] == float(energy)
    np.testing.assert_array_equal(got["forces"], forces.numpy())


def test_oc20_lmdb_pyg1_layout_shards(tmp_path):
    """Original OC20 S2EF shards: PyG 1.x Data, names y/force, 'length' key, data.0000.lmdb, ..."""
    frames = source_frames(0, [4, 6, 5, 3, 7])
    shards = {"data.0000.lmdb": frames[:3], "data.0001.lmdb": frames[3:]}
    for name, part in shards.items():
        write_raw_lmdb(tmp_path / name, [pickle_pyg1(pyg1_record(f)) for f in part])
    (tmp_path / "data_log.0000.txt").write_text("random1,frame0\n")     # preprocess_ef's logs lie beside

    # the bytes are what PyG 1.x wrote: current PyG unpickles them into a Data without a _store, which
    # fairchem's pyg2_data_transform rebuilds from __dict__
    env = lmdb.open(str(tmp_path / "data.0001.lmdb"), subdir=False, readonly=True, lock=False)
    with env.begin() as txn:
        legacy = pickle.loads(txn.get(b"1"))
    env.close()
    assert type(legacy) is Data and "_store" not in legacy.__dict__ and legacy.__dict__["x"] is None
    pyg = Data(**{k: v for k, v in legacy.__dict__.items() if v is not None})

    assert detect_format(tmp_path) == "lmdb"
    ds = open_dataset(tmp_path)
    assert isinstance(ds, LmdbDataset) and [f.name for f in ds.files] == list(shards) and len(ds) == 5
    for i, frame in enumerate(frames):
        assert_same_frame(ds.raw(i), frame)
    assert_same_as_pyg(ds.raw(4), pyg)
    assert ds.locate(3) == (tmp_path / "data.0001.lmdb", "0")
    tensors = ds[2]
    assert tensors["atomic_numbers"].dtype == torch.int64 and tensors["pos"].dtype == torch.float32

    # and without torch_geometric: a process where importing it fails reads and validates every frame
    blocked = ("import sys; sys.modules['torch_geometric'] = None\n"
               "from graph_parallel.data.check import main; main(sys.argv[1:])")
    result = subprocess.run([sys.executable, "-c", blocked, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"{tmp_path}: lmdb, 2 file(s), 5 frames (5 checked)" in result.stdout


def test_oc20_lmdb_pyg2_layout_without_length_key(tmp_path):
    """fairchem's newer LMDBs: PyG >= 2.0 Data (pickled by torch_geometric), names energy/forces,
    tensor ids, extra fields, and no 'length' key (frames = entries)."""
    frames = source_frames(1, [3, 8, 2, 5], sid0=100)
    data = [pyg2_record(f) for f in frames]
    write_raw_lmdb(tmp_path / "data.0000.lmdb", [pickle.dumps(d, protocol=pickle.HIGHEST_PROTOCOL) for d in data[:2]],
                   length=False)
    write_raw_lmdb(tmp_path / "data.0001.lmdb", [pickle.dumps(d, protocol=4) for d in data[2:]], length=False)
    ds = open_dataset(tmp_path)
    assert isinstance(ds, LmdbDataset) and ds.lengths == [2, 2]
    for i, (frame, pyg) in enumerate(zip(frames, data)):
        got = ds.raw(i)
        assert_same_frame(got, frame)
        assert_same_as_pyg(got, pyg)
    # a single shard is a dataset too
    single = LmdbDataset(tmp_path / "data.0001.lmdb")
    assert len(single) == 2 and single.raw(1)["sid"] == 103


def test_own_records_read_through_the_restricted_unpickler(tmp_path):
    frames = source_frames(2, [3, 4])
    write_lmdb(tmp_path / "train.lmdb", frames)
    assert detect_format(tmp_path / "train.lmdb") == "lmdb"
    ds = open_dataset(tmp_path / "train.lmdb")
    for i, frame in enumerate(frames):
        assert_same_frame(ds.raw(i), frame)
    assert find_split(tmp_path, "train") == tmp_path / "train.lmdb" and find_split(tmp_path, "val") is None
    with pytest.raises(MissingFileError, match="val.lmdb, val.aselmdb"):
        find_split(tmp_path, "val", required=True)


def test_unpickler_refuses_other_globals(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            import os
            return os.system, (f"touch {marker}",)

    frame = source_frames(3, [3])[0]
    state = pyg1_record(frame)
    state["edge_attr"] = Exploit()                         # hidden inside an otherwise genuine Data
    write_raw_lmdb(tmp_path / "evil.lmdb", [pickle_pyg1(state)])
    ds = LmdbDataset(tmp_path / "evil.lmdb")
    with pytest.raises(DataError, match=r"evil\.lmdb key '0' \(frame 0\): refused to unpickle global '(posix|os)\.system'"):
        ds.raw(0)
    assert not marker.exists()
    # the 'length' entry goes through the same unpickler
    write_raw_lmdb(tmp_path / "len.lmdb", [pickle_pyg1(pyg1_record(frame))], length=False)
    env = lmdb.open(str(tmp_path / "len.lmdb"), subdir=False, lock=False)
    with env.begin(write=True) as txn:
        txn.put(b"length", pickle.dumps(Exploit()))
    env.close()
    with pytest.raises(DataError, match=r"len\.lmdb key 'length': refused to unpickle global"):
        LmdbDataset(tmp_path / "len.lmdb")
    assert not marker.exists()


def ase_atoms(frame):
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.constraints import FixAtoms

    atoms = Atoms(numbers=frame["atomic_numbers"], positions=frame["pos"], cell=frame["cell"], pbc=True,
                  tags=frame["tags"])
    atoms.set_constraint(FixAtoms(indices=np.nonzero(frame["fixed"])[0]))
    atoms.calc = SinglePointCalculator(atoms, energy=frame["energy"], forces=frame["forces"])
    return atoms


def test_aselmdb_written_by_ase_db_backends(tmp_path):
    """The writer fairchem uses now: ase.db.connect('x.aselmdb') -> ase_db_backends.aselmdb.LMDBDatabase."""
    import ase.db

    frames = source_frames(4, [5, 3, 6, 4])
    for name, part in (("a.aselmdb", frames[:3]), ("b.aselmdb", frames[3:])):
        db = ase.db.connect(str(tmp_path / name), use_lock_file=False)
        for frame in part:
            db.write(ase_atoms(frame), sid=frame["sid"], data={"fid": frame["fid"]})
        if name == "a.aselmdb":
            db.delete([2])                                  # leaves a hole: ids 1, 3 and 'deleted_ids'
            db.metadata = {"note": "test"}
        db.close()
        del db
    expected = [frames[0], frames[2], frames[3]]
    reference = ase.db.connect(str(tmp_path / "a.aselmdb"), readonly=True, use_lock_file=False)
    rows = [reference.get(id=row_id) for row_id in (1, 3)]           # what ASE itself reads back
    reference.close()
    del reference                              # py-lmdb allows one open environment per file and process
    for path in (tmp_path / "a.aselmdb", tmp_path):
        assert detect_format(path) == "aselmdb"
    ds = open_dataset(tmp_path)
    assert isinstance(ds, AseLmdbDataset) and len(ds) == 3 and ds.ids[0] == [1, 3]
    for i, frame in enumerate(expected):
        got = ds.raw(i)
        assert_same_frame(got, frame)
        if i < 2:
            row = rows[i]
            np.testing.assert_array_equal(got["pos"], row.positions.astype(np.float32))
            np.testing.assert_array_equal(got["forces"], row.forces.astype(np.float32))
            np.testing.assert_array_equal(got["cell"][0], row.cell.astype(np.float32))
            assert got["energy"] == row.energy and got["tags"].tolist() == row.tags.tolist()
            assert got["fixed"].tolist() == [int(k in row.constraints[0].index) for k in range(row.natoms)]


def fairchem1_row(frame, row_id):
    """A row as fairchem 1.x's own LMDBDatabase stored it: orjson with numpy arrays as nested lists."""
    return {"numbers": frame["atomic_numbers"].tolist(), "positions": frame["pos"].astype(float).tolist(),
            "unique_id": f"{row_id:032x}", "pbc": [True, True, True], "cell": frame["cell"].astype(float).tolist(),
            "tags": frame["tags"].tolist(), "calculator": "unknown", "calculator_parameters": {},
            "energy": frame["energy"], "forces": frame["forces"].astype(float).tolist(), "ctime": 24.5,
            "user": "me", "mtime": 24.5, "key_value_pairs": {"sid": frame["sid"], "fid": frame["fid"]},
            "constraints": [{"name": "FixAtoms", "kwargs": {"indices": np.nonzero(frame["fixed"])[0].tolist()}}]
            if frame["fixed"].any() else []}


def write_fairchem1_aselmdb(path, rows, deleted=()):
    encode = lambda obj: zlib.compress(json.dumps(obj).encode("utf-8"))
    env = lmdb.open(str(path), subdir=False, map_size=1 << 26, lock=False)
    with env.begin(write=True) as txn:
        for row_id, row in rows.items():
            txn.put(str(row_id).encode("ascii"), encode(row))
        txn.put(b"nextid", encode(max(rows) + 1))
        if deleted:
            txn.put(b"deleted_ids", encode(list(deleted)))
        txn.put(b"metadata", encode({"units": "eV"}))
    env.close()


def test_aselmdb_fairchem1_encoding_and_lmdb_suffix(tmp_path):
    frames = source_frames(5, [4, 2, 5])
    rows = {1: fairchem1_row(frames[0], 1), 2: fairchem1_row(frames[1], 2), 4: fairchem1_row(frames[2], 4)}
    write_fairchem1_aselmdb(tmp_path / "oc.aselmdb", rows, deleted=[3])
    ds = open_dataset(tmp_path / "oc.aselmdb")
    assert len(ds) == 3
    for i, frame in enumerate(frames):
        assert_same_frame(ds.raw(i), frame)
    # fairchem 1.x's own tests named such files *.lmdb: found by content, not by suffix
    (tmp_path / "sub").mkdir()
    write_fairchem1_aselmdb(tmp_path / "sub" / "ase.lmdb", rows, deleted=[3])
    assert detect_format(tmp_path / "sub" / "ase.lmdb") == "aselmdb" == detect_format(tmp_path / "sub")
    assert_same_frame(open_dataset(tmp_path / "sub").raw(2), frames[2])
    # a text sid (OMat24 style) becomes a stable integer
    rows[1]["key_value_pairs"]["sid"] = "agm002153671"
    write_fairchem1_aselmdb(tmp_path / "text.aselmdb", rows)
    sids = {AseLmdbDataset(tmp_path / "text.aselmdb").raw(0)["sid"] for _ in range(2)}
    assert len(sids) == 1 and 0 <= sids.pop() < 2 ** 63


def test_open_dataset_reads_ase_db_files(tmp_path):
    import ase.db

    frames = source_frames(6, [3, 4])
    for suffix in (".db", ".json"):
        with ase.db.connect(str(tmp_path / f"x{suffix}"), use_lock_file=False) as db:
            for frame in frames:
                db.write(ase_atoms(frame), sid=frame["sid"], fid=frame["fid"])
        ds = open_dataset(tmp_path / f"x{suffix}")
        assert isinstance(ds, AseDbDataset) and detect_format(tmp_path / f"x{suffix}") == "asedb"
        for i, frame in enumerate(frames):
            got = ds.raw(i)
            np.testing.assert_allclose(got["pos"], frame["pos"], atol=1e-6)
            assert got["fixed"].tolist() == frame["fixed"].tolist() and got["sid"] == frame["sid"]
