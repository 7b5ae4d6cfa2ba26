"""Damaged data is reported, never crashes: truncated LMDBs (which SIGBUS an unchecked reader),
corrupt records, non-LMDB files, damaged ASE databases, non-finite values; readers create nothing."""
import json
import os
import pickle
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import lmdb
import numpy as np
import pytest

from graph_parallel.data import (EMBEDDED_DATA_DIR, AseDbDataset, AseLmdbDataset, LmdbDataset, NonFiniteDataError,
                                 close_lmdb_files, find_split, open_dataset, write_lmdb)
from runtime.errors import DataError, MissingFileError, NonFiniteError

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def make_frames(count, n=5, seed=0):
    rng = np.random.default_rng(seed)
    return [{"pos": rng.uniform(0, 6, (n, 3)), "cell": np.diag([7.0, 7.5, 8.0]), "atomic_numbers": rng.integers(1, 80, n),
             "natoms": n, "tags": rng.integers(0, 3, n), "fixed": rng.integers(0, 2, n), "energy": float(rng.normal()),
             "forces": rng.normal(size=(n, 3)), "sid": i, "fid": 0} for i in range(count)]


def ase_row(frame):
    """A fairchem ASE-LMDB row (JSON lists, as fairchem 1.x's orjson writer stored numpy arrays)."""
    return {"numbers": frame["atomic_numbers"].tolist(), "positions": frame["pos"].tolist(),
            "cell": frame["cell"].tolist(), "pbc": [True] * 3, "tags": frame["tags"].tolist(),
            "energy": frame["energy"], "forces": frame["forces"].tolist(), "key_value_pairs": {"sid": frame["sid"]},
            "constraints": [{"name": "FixAtoms", "kwargs": {"indices": np.nonzero(frame["fixed"])[0].tolist()}}]}


def write_aselmdb(path, rows, raw=None):
    encode = lambda obj: zlib.compress(json.dumps(obj).encode("utf-8"))
    env = lmdb.open(str(path), subdir=False, map_size=1 << 26, lock=False)
    with env.begin(write=True) as txn:
        for i, row in enumerate(rows, start=1):
            txn.put(str(i).encode("ascii"), encode(row))
        for key, value in (raw or {}).items():
            txn.put(key, value)
        txn.put(b"nextid", encode(len(rows) + 1))
    env.close()


def put_raw(path, items):
    env = lmdb.open(str(path), subdir=False, map_size=1 << 26, lock=False)
    with env.begin(write=True) as txn:
        for key, value in items.items():
            txn.put(key, value)
    env.close()


def truncate_copy(src, dst, size):
    shutil.copyfile(src, dst)
    os.truncate(dst, size)
    return dst


def test_truncated_lmdb_is_refused_before_any_page_is_read(tmp_path):
    full = EMBEDDED_DATA_DIR / "train.lmdb"
    half = truncate_copy(full, tmp_path / "half.lmdb", full.stat().st_size // 2)

    # an unchecked reader dies of SIGBUS on this file (the hazard the check prevents)
    unchecked = subprocess.run([sys.executable, "-c", "import lmdb, sys\nenv = lmdb.open(sys.argv[1], subdir=False, "
                                "readonly=True, lock=False)\nwith env.begin() as t: print(sum(1 for _ in t.cursor()))",
                                str(half)], capture_output=True, text=True, timeout=60)
    assert unchecked.returncode < 0, unchecked

    result = subprocess.run([sys.executable, "-m", "graph_parallel.data.check", str(half)], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result                       # not a signal (negative) nor a traceback (1)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {half}: truncated LMDB"), result.stderr
    assert f"has {half.stat().st_size:,} bytes but its header needs {full.stat().st_size:,}" in lines[0]
    assert "python -m graph_parallel.make_dataset" in lines[0] and "re-download" in lines[0]

    # a few bytes; only the two meta pages; a truncated ASE-LMDB; one truncated shard of a directory
    few = truncate_copy(full, tmp_path / "few.lmdb", 10)
    metas = truncate_copy(full, tmp_path / "metas.lmdb", 8192)
    write_aselmdb(tmp_path / "rows.aselmdb", [ase_row(f) for f in make_frames(60, n=12)])
    ase_half = truncate_copy(tmp_path / "rows.aselmdb", tmp_path / "half.aselmdb",
                             (tmp_path / "rows.aselmdb").stat().st_size // 2)
    shards = tmp_path / "shards"
    shards.mkdir()
    shutil.copyfile(full, shards / "data.0000.lmdb")
    truncate_copy(full, shards / "data.0001.lmdb", 3 * 4096)
    script = textwrap.dedent("""
        import sys
        from graph_parallel.data import open_dataset
        from runtime.errors import DataError
        for path in sys.argv[1:]:
            try:
                ds = open_dataset(path)
                for i in range(len(ds)):
                    ds.raw(i)
            except DataError as err:
                print("refused", err)
            else:
                print("read", path)
    """)
    cases = [few, metas, ase_half, shards]
    result = subprocess.run([sys.executable, "-c", script, *map(str, cases)], cwd=ROOT, env=ENV, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(cases), result.stdout
    assert lines[0].startswith(f"refused {few}: only 10 bytes, too short for an LMDB header")
    for line, path in zip(lines[1:], [metas, ase_half, shards / "data.0001.lmdb"]):
        assert line.startswith(f"refused {path}: truncated LMDB: the file has"), line

    # the same in-process, now that a subprocess showed it does not kill the interpreter
    for path in [half, *cases]:
        with pytest.raises(DataError, match="truncated|too short"):
            open_dataset(path)
    with pytest.raises(DataError, match="truncated"):
        LmdbDataset(half)
    with pytest.raises(DataError, match="truncated"):
        AseLmdbDataset(ase_half)


def test_corrupt_records_name_file_key_and_problem(tmp_path):
    path = tmp_path / "x.lmdb"
    frames = make_frames(7)
    write_lmdb(path, frames)
    no_forces = {k: v for k, v in frames[2].items() if k != "forces"}
    short_forces = {**frames[3], "forces": frames[3]["forces"][:4]}
    is2re = {k: v for k, v in frames[4].items() if k not in ("forces", "energy")}
    is2re.update(y_init=1.0, y_relaxed=0.5, pos_relaxed=frames[4]["pos"])
    put_raw(path, {b"1": b"\x80\x04\x95\x10garbage", b"2": pickle.dumps(no_forces), b"3": pickle.dumps(short_forces),
                   b"4": pickle.dumps(is2re), b"5": pickle.dumps([1, 2, 3])})
    ds = LmdbDataset(path)
    assert ds.raw(0)["sid"] == 0 and ds.raw(6)["sid"] == 6
    expected = {1: "damaged record, cannot unpickle it", 2: r"missing field\(s\) \['forces'\]",
                3: r"field 'forces' must have shape \[5, 3\], got \[4, 3\]", 4: r"missing field\(s\) \['energy', 'forces'\] \(this is an IS2RE record",
                5: "a record must be a dict of fields, got list"}
    for index, problem in expected.items():
        with pytest.raises(DataError, match=rf"x\.lmdb key '{index}' \(frame {index}\): {problem}"):
            ds[index]

    # a 'length' that the file does not hold, and keys that do not start at "0"
    close_lmdb_files(path)                    # py-lmdb refuses to open a file twice in one process
    put_raw(path, {b"length": pickle.dumps(9)})
    with pytest.raises(DataError, match=r"x\.lmdb: the 'length' entry says 9 frames but the file holds only 7"):
        LmdbDataset(path)
    shifted = tmp_path / "shifted.lmdb"
    put_raw(shifted, {str(i + 1).encode(): pickle.dumps(f) for i, f in enumerate(frames[:3])})
    with pytest.raises(DataError, match=r"shifted\.lmdb key '0' \(frame 0\): record missing"):
        LmdbDataset(shifted).raw(0)


def test_non_lmdb_files_are_refused(tmp_path):
    (tmp_path / "random.lmdb").write_bytes(np.random.default_rng(0).bytes(20000))
    (tmp_path / "empty.lmdb").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a dataset\n" * 100)
    with pytest.raises(DataError, match=r"random\.lmdb: not an LMDB file"):
        LmdbDataset(tmp_path / "random.lmdb")
    with pytest.raises(DataError, match=r"empty\.lmdb: empty file"):
        open_dataset(tmp_path / "empty.lmdb")
    with pytest.raises(DataError, match=r"notes\.txt: not an LMDB file"):
        open_dataset(tmp_path / "notes.txt")
    # an ASE-LMDB whose values are not zlib-compressed JSON, and one with a damaged row
    put_raw(tmp_path / "pickles.aselmdb", {b"nextid": zlib.compress(b"3"), b"1": pickle.dumps({"a": 1})})
    with pytest.raises(DataError, match=r"pickles\.aselmdb row id 1 \(frame 0\): damaged ASE-LMDB value"):
        open_dataset(tmp_path / "pickles.aselmdb").raw(0)
    write_aselmdb(tmp_path / "rows.aselmdb", [ase_row(f) for f in make_frames(3)], raw={b"2": b"\x78\x9cbroken"})
    ds = open_dataset(tmp_path / "rows.aselmdb")
    assert ds.raw(0)["sid"] == 0
    with pytest.raises(DataError, match=r"rows\.aselmdb row id 2 \(frame 1\): damaged ASE-LMDB value"):
        ds.raw(1)
    put_raw(tmp_path / "badnext.aselmdb", {b"nextid": zlib.compress(b'"many"')})
    with pytest.raises(DataError, match=r"badnext\.aselmdb: not an ASE-LMDB database"):
        AseLmdbDataset(tmp_path / "badnext.aselmdb")


def test_damaged_or_foreign_ase_databases(tmp_path):
    import ase.db
    from ase.build import molecule
    from ase.calculators.singlepoint import SinglePointCalculator

    (tmp_path / "random.db").write_bytes(np.random.default_rng(1).bytes(5000))
    (tmp_path / "empty.db").write_bytes(b"")
    for name in ("random.db", "empty.db"):
        with pytest.raises(DataError, match=rf"{name}: not an SQLite file"):
            AseDbDataset(tmp_path / name)
    # an SQLite file of something else: refused, and left exactly as it was (ase would add its tables)
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as con:
        con.execute("CREATE TABLE t (a INTEGER)")
    before = foreign.read_bytes()
    with pytest.raises(DataError, match=r"foreign\.db: not a readable ASE database \(an SQLite file without ASE's"):
        open_dataset(foreign)
    assert foreign.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "empty.db", "foreign.db", "random.db"]
    (tmp_path / "garbage.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[1, 2, 3]")
    for name in ("garbage.json", "list.json"):
        with pytest.raises(DataError, match=rf"{name}: not a readable ASE database"):
            AseDbDataset(tmp_path / name)

    # a genuine ASE database cut in half, and a row without forces
    atoms = molecule("CH3CH2OH")
    atoms.cell, atoms.pbc = np.eye(3) * 10, True
    real = tmp_path / "real.db"
    with ase.db.connect(str(real), use_lock_file=False) as db:
        for i in range(60):
            atoms.calc = SinglePointCalculator(atoms, energy=float(i), forces=np.zeros((len(atoms), 3)))
            db.write(atoms, sid=i)
        atoms.calc = SinglePointCalculator(atoms, energy=1.0)
        db.write(atoms, sid=99)
    ds = AseDbDataset(real)
    with pytest.raises(DataError, match=rf"real\.db row id 61 \(frame 60\): row has no energy/forces"):
        ds.raw(60)
    cut = truncate_copy(real, tmp_path / "cut.db", real.stat().st_size // 2)
    with pytest.raises(DataError, match=r"cut\.db"):
        ds = AseDbDataset(cut)
        for i in range(len(ds)):
            ds.raw(i)


def test_non_finite_values_name_field_and_frame(tmp_path):
    frames = make_frames(4)
    bad_forces = {**frames[2], "forces": frames[2]["forces"].copy()}
    bad_forces["forces"][1, 2] = np.nan
    path = tmp_path / "nan.lmdb"
    write_lmdb(path, frames)
    put_raw(path, {b"0": pickle.dumps({**frames[0], "energy": float("inf")}), b"2": pickle.dumps(bad_forces),
                   b"3": pickle.dumps({**frames[3], "pos": np.full((5, 3), np.nan)})})
    ds = LmdbDataset(path)
    cases = {0: "non-finite values in 'energy'", 2: r"non-finite values in 'forces': 1 of 15 entries .* \(atom\(s\) \[1\]\)",
             3: r"non-finite values in 'pos': 15 of 15 entries .* \(atom\(s\) \[0, 1, 2, 3, 4\]\)"}
    for index, problem in cases.items():
        with pytest.raises(NonFiniteDataError, match=rf"nan\.lmdb key '{index}' \(frame {index}\): {problem}") as err:
            ds.raw(index)
        assert isinstance(err.value, NonFiniteError) and isinstance(err.value, DataError)
    assert ds.raw(1)["sid"] == 1

    # ASE-LMDB rows: JSON NaN (ASE's encoder) and null (orjson writes NaN as null)
    rows = [ase_row(f) for f in make_frames(3)]
    rows[1]["forces"][0][0] = float("nan")
    rows[2]["positions"][4][1] = None
    write_aselmdb(tmp_path / "nan.aselmdb", rows)
    ase_ds = AseLmdbDataset(tmp_path / "nan.aselmdb")
    with pytest.raises(NonFiniteError, match=r"row id 2 \(frame 1\): non-finite values in 'forces'.*atom\(s\) \[0\]"):
        ase_ds.raw(1)
    with pytest.raises(NonFiniteError, match=r"row id 3 \(frame 2\): non-finite values in 'pos'.*atom\(s\) \[4\]"):
        ase_ds.raw(2)

    # the writer refuses them too, and leaves no file
    with pytest.raises(NonFiniteDataError, match=r"frame 1: non-finite values in 'forces'"):
        write_lmdb(tmp_path / "out.lmdb", [frames[1], bad_forces])
    assert not list(tmp_path.glob("out.lmdb*"))


def test_readers_never_create_files(tmp_path):
    missing_dir = tmp_path / "nope"
    for reader, name in ((LmdbDataset, "x.lmdb"), (AseLmdbDataset, "x.aselmdb"), (AseDbDataset, "x.db"),
                         (AseDbDataset, "x.json"), (open_dataset, "x.lmdb"), (open_dataset, "x.aselmdb"),
                         (open_dataset, "x.db"), (LmdbDataset, ""), (open_dataset, "")):
        for path in (missing_dir / name, tmp_path / name if name else missing_dir):
            with pytest.raises(MissingFileError, match=str(path.name)):
                reader(path)
    assert find_split(missing_dir, "train") is None
    assert list(tmp_path.iterdir()) == []

    # reading valid files of every format leaves the directory as it was: no -lock, .lock or journal files
    import ase.db
    from ase.build import bulk
    from ase.calculators.singlepoint import SinglePointCalculator

    write_lmdb(tmp_path / "a.lmdb", make_frames(2))
    write_aselmdb(tmp_path / "b.aselmdb", [ase_row(f) for f in make_frames(2)])
    atoms = bulk("Cu", cubic=True)
    atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=np.zeros((len(atoms), 3)))
    for name in ("c.db", "d.json"):
        with ase.db.connect(str(tmp_path / name), use_lock_file=False) as db:
            db.write(atoms)
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    for name in before:
        ds = open_dataset(tmp_path / name)
        assert len(ds) >= 1 and [ds.raw(i)["natoms"] for i in range(len(ds))]
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before


def test_a_file_another_reader_holds_open_is_not_called_damaged(tmp_path):
    path = tmp_path / "held.lmdb"
    write_lmdb(path, make_frames(3))
    close_lmdb_files(path)
    holder = lmdb.open(str(path), subdir=False, readonly=True, lock=False)   # e.g. another library's dataset
    try:
        with pytest.raises(DataError) as info:
            LmdbDataset(path)
        message = str(info.value)
        assert "another reader in this process still holds it open" in message and "damaged" not in message
    finally:
        holder.close()
    assert len(LmdbDataset(path)) == 3                                       # closed: it reads
    os.utime(path, ns=(0, 0))                                                # the file changes under our reader
    with pytest.raises(DataError, match=r"an earlier version of it .*close_lmdb_files"):
        LmdbDataset(path)
    close_lmdb_files(path)
    assert len(LmdbDataset(path)) == 3
