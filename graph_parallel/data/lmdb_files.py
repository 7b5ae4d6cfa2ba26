"""Opening LMDB files for reading without creating, locking or crashing on anything.

LMDB maps the whole file into memory; a page past the end of a truncated file is not an error
but a SIGBUS that kills the process (exit code 135) the first time it is touched. So before any
data page is read, :func:`open_lmdb` checks, in this order:

1. the path exists (else :class:`MissingFileError`; nothing is created: ``readonly=True``,
   ``create=False``, ``lock=False``, so neither the file nor a ``-lock`` file appears);
2. it is a non-empty file whose first meta page carries LMDB's magic number 0xBEEFC0DE;
3. after opening read-only, its size covers every page the header says is in use:
   ``size >= (env.info()['last_pgno'] + 1) * env.stat()['psize']`` (these numbers come from the
   two meta pages at the start of the file, which step 2 showed are there).

Any failure is a :class:`DataError` naming the file, what is wrong and how to rebuild it -- or,
when py-lmdb refuses a second open of a file another reader in this process holds, saying so.
Environments are cached per (process, file, mtime): LMDB forbids opening one file twice in a
process, and DataLoader workers (other pids) open their own.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Dict, List, Sequence

import lmdb

from runtime.errors import DataError, MissingFileError

from graph_parallel.data.records import REBUILD_HINT

LMDB_MAGIC = 0xBEEFC0DE
_MAGIC_OFFSET = 16            # after the 16-byte page header of meta page 0
_ENVS: Dict = {}
ALREADY_OPEN = "already open in this process"      # py-lmdb's lmdb.Error text for a second open


def _check_header(file: Path, size: int) -> None:
    if size == 0:
        raise DataError(f"{file}: empty file (0 bytes), not an LMDB database; {REBUILD_HINT}")
    with open(file, "rb") as fh:
        head = fh.read(_MAGIC_OFFSET + 4)
    if len(head) < _MAGIC_OFFSET + 4:
        raise DataError(f"{file}: only {size} bytes, too short for an LMDB header (truncated, or not an "
                        f"LMDB file); {REBUILD_HINT}")
    magic = head[_MAGIC_OFFSET:_MAGIC_OFFSET + 4]
    if LMDB_MAGIC not in (struct.unpack("<I", magic)[0], struct.unpack(">I", magic)[0]):
        raise DataError(f"{file}: not an LMDB file (no LMDB magic number in its first page; {size} bytes); "
                        "point to an OC20/S2EF .lmdb or fairchem .aselmdb file")


def _already_open(file: Path, key: tuple) -> str:
    """What to say when py-lmdb refuses a second open of ``file`` in this process."""
    stale = [k for k in _ENVS if k[:2] == key[:2]]
    if stale:
        holder = ("this process already reads an earlier version of it (the file changed since it was opened); "
                  "call graph_parallel.data.close_lmdb_files(path) before reading the new one")
    else:
        holder = ("another reader in this process still holds it open (e.g. an lmdb.open or another library's "
                  "dataset); close that environment first, or read the file in another process")
    return f"{file}: LMDB allows one open environment per file and process: {holder}. The file itself is fine"


def open_lmdb(file) -> lmdb.Environment:
    """A cached read-only environment for ``file``, after the checks in the module docstring."""
    file = Path(file)
    if not file.exists():
        raise MissingFileError(f"LMDB file not found: {file}")
    if not file.is_file():
        raise DataError(f"{file}: not a file (LMDB datasets are single files or directories of *.lmdb files)")
    stat = os.stat(file)
    key = (os.getpid(), str(file.resolve()), stat.st_mtime_ns, stat.st_size)
    if key in _ENVS:
        return _ENVS[key]
    _check_header(file, stat.st_size)
    try:
        env = lmdb.open(str(file), subdir=False, readonly=True, lock=False, create=False, readahead=False,
                        meminit=False, max_readers=1, max_dbs=0)
    except lmdb.Error as exc:
        if ALREADY_OPEN in str(exc):
            raise DataError(_already_open(file, key)) from exc
        raise DataError(f"{file}: cannot open as LMDB ({exc}); the file is damaged or truncated "
                        f"({stat.st_size} bytes); {REBUILD_HINT}") from exc
    psize, last_pgno = env.stat()["psize"], env.info()["last_pgno"]
    needed = (last_pgno + 1) * psize
    if stat.st_size < needed:
        env.close()
        raise DataError(f"{file}: truncated LMDB: the file has {stat.st_size:,} bytes but its header needs "
                        f"{needed:,} ({last_pgno + 1} pages of {psize} bytes); an interrupted copy or download? "
                        f"{REBUILD_HINT[0].upper()}{REBUILD_HINT[1:]}")
    _ENVS[key] = env
    return env


def list_files(path, suffixes: Sequence[str], what: str) -> List[Path]:
    """``path`` itself if it is a file, else its files with one of ``suffixes``, sorted by name.

    Sorting by name is fairchem's order, so shard ``data.0000.lmdb`` comes first and frame indices
    match fairchem's. Never creates anything; a missing path is a :class:`MissingFileError`.
    """
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"{what} not found: {path}")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in suffixes and p.is_file())
        if not files:
            raise MissingFileError(f"no {' or '.join('*' + s for s in suffixes)} files in directory {path}")
        return files
    return [path]


def close_lmdb_files(path=None) -> None:
    """Close this process's cached environments (of ``path`` only, if given), e.g. before rewriting
    a file in place: py-lmdb refuses a second open of a file that is still open in the process."""
    target = str(Path(path).resolve()) if path is not None else None
    for key in [k for k in _ENVS if k[0] == os.getpid() and (target is None or k[1] == target)]:
        _ENVS.pop(key).close()
