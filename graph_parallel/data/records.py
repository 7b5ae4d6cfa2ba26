"""One S2EF frame as every reader returns it, and the checks every reader applies.

Readers (pickled OC20 LMDBs, fairchem ASE-LMDBs, ASE databases) turn whatever they store into a
plain dict and pass it through :func:`validate_frame`, which returns the frame in fixed dtypes:

==================  ==========  =========  ==============================================
field               shape       dtype      meaning
==================  ==========  =========  ==============================================
``pos``             [N, 3]      float32    positions (A)
``cell``            [1, 3, 3]   float32    lattice vectors as rows
``atomic_numbers``  [N]         int64      1..100
``natoms``          scalar      int        N
``tags``            [N]         int64      0 subsurface, 1 surface, 2 adsorbate
``fixed``           [N]         int64      1 = held fixed
``energy``          scalar      float      eV (legacy name ``y``)
``forces``          [N, 3]      float32    eV/A (legacy name ``force``)
``sid``, ``fid``    scalar      int        system id and frame id
==================  ==========  =========  ==============================================

Rules: a missing field or a wrong shape is a :class:`DataError`; a NaN or infinite position,
cell, energy or force is a :class:`NonFiniteDataError` (both a ``DataError`` and a
``NonFiniteError``). Every message starts with ``where`` (the file, key and frame index).
"""
from __future__ import annotations

import hashlib
from typing import Dict

import numpy as np
import torch

from runtime.errors import DataError, NonFiniteError

FIELDS = ("pos", "cell", "atomic_numbers", "natoms", "tags", "fixed", "energy", "forces", "sid", "fid")
ALIASES = {"y": "energy", "force": "forces"}
REBUILD_HINT = ("rebuild the file (`python -m graph_parallel.make_dataset --out_dir DIR` for the generated EMT "
                "data) or re-download / re-copy the OC20 shard")


class NonFiniteDataError(NonFiniteError, DataError):
    """A NaN or infinite value in a stored frame (catchable as NonFiniteError or DataError)."""


def _array(value, where: str, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        out = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: field '{name}' is not an array ({type(value).__name__}: {exc})") from exc
    if out.dtype == object:                  # e.g. JSON nulls written for NaN: None -> nan
        try:
            out = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            pass
    if out.dtype.kind not in "biuf":
        raise DataError(f"{where}: field '{name}' must hold numbers, got dtype {out.dtype}")
    return out


def _scalar(value, where: str, name: str) -> np.ndarray:
    out = _array(value, where, name)
    if out.size != 1:
        raise DataError(f"{where}: field '{name}' must be one number, got shape {list(out.shape)}")
    return out.reshape(())


def _integers(value, where: str, name: str, shape) -> np.ndarray:
    raw = _array(value, where, name)
    if raw.shape != tuple(shape):
        raise DataError(f"{where}: field '{name}' must have shape {list(shape)}, got {list(raw.shape)}")
    if raw.dtype.kind == "f" and not np.array_equal(raw, np.round(raw)):
        raise DataError(f"{where}: field '{name}' must hold whole numbers, got {raw.ravel()[:8].tolist()}")
    return raw.astype(np.int64)


def _identifier(value, where: str, name: str) -> int:
    """An integer id; a string id (e.g. OMat24's sids) maps to a stable 56-bit hash of its text."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=7).digest(), "little")
    return int(_integers(_scalar(value, where, name), where, name, ()))


def _check_finite(where: str, name: str, value: np.ndarray) -> None:
    bad = ~np.isfinite(value)
    if bad.any():
        rows = np.nonzero(bad.reshape(len(value), -1).any(1))[0] if value.ndim >= 1 else []
        at = f" (atom(s) {rows[:5].tolist()}{'...' if len(rows) > 5 else ''})" if name in ("pos", "forces") else ""
        raise NonFiniteDataError(
            f"{where}: non-finite values in '{name}': {int(bad.sum())} of {value.size} entries are NaN or "
            f"infinite{at}; drop or recompute this frame, or {REBUILD_HINT}")


def validate_frame(frame: Dict, where: str = "frame") -> Dict[str, np.ndarray]:
    """Check one record's fields, shapes and finiteness; return it in the dtypes of the table above."""
    if not isinstance(frame, dict):
        raise DataError(f"{where}: a record must be a dict of fields, got {type(frame).__name__}")
    frame = {ALIASES.get(k, k): v for k, v in frame.items()}
    missing = [f for f in FIELDS if f not in frame]
    if missing:
        hint = ""
        if "forces" in missing and ("y_relaxed" in frame or "y_init" in frame):
            hint = " (this is an IS2RE record: relaxed energy only, no forces; S2EF training needs forces)"
        raise DataError(f"{where}: missing field(s) {missing}{hint}; an S2EF record needs {list(FIELDS)}")

    pos = _array(frame["pos"], where, "pos").astype(np.float32)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise DataError(f"{where}: field 'pos' must have shape [N, 3], got {list(pos.shape)}")
    n = pos.shape[0]
    forces = _array(frame["forces"], where, "forces").astype(np.float32)
    if forces.shape != (n, 3):
        raise DataError(f"{where}: field 'forces' must have shape [{n}, 3], got {list(forces.shape)}")
    cell = _array(frame["cell"], where, "cell").astype(np.float32)
    if cell.size != 9:
        raise DataError(f"{where}: field 'cell' must hold 3x3 numbers, got shape {list(cell.shape)}")
    out = {"pos": pos, "cell": cell.reshape(1, 3, 3), "forces": forces}
    for name in ("atomic_numbers", "tags", "fixed"):
        out[name] = _integers(frame[name], where, name, (n,))
    natoms = int(_integers(_scalar(frame["natoms"], where, "natoms"), where, "natoms", ()))
    if natoms != n:
        raise DataError(f"{where}: 'natoms'={natoms} but 'pos' has {n} rows")
    out["natoms"] = natoms
    energy = _scalar(frame["energy"], where, "energy").astype(np.float64)
    for name, value in (("pos", pos), ("cell", out["cell"]), ("energy", energy), ("forces", forces)):
        _check_finite(where, name, value)
    out["energy"] = float(energy)
    z = out["atomic_numbers"]
    if z.min(initial=1) < 1 or z.max(initial=1) > 100:
        raise DataError(f"{where}: atomic numbers must lie in 1..100, got {z.tolist()}")
    out["sid"] = _identifier(frame["sid"], where, "sid")
    out["fid"] = _identifier(frame["fid"], where, "fid")
    return out


def frame_to_tensors(record: Dict) -> Dict[str, torch.Tensor]:
    """A validated record as tensors: float32 geometry, long integer fields, float64 energy."""
    return {
        "pos": torch.from_numpy(record["pos"]),
        "cell": torch.from_numpy(record["cell"]),
        "atomic_numbers": torch.from_numpy(record["atomic_numbers"]),
        "natoms": torch.tensor(record["natoms"]),
        "tags": torch.from_numpy(record["tags"]),
        "fixed": torch.from_numpy(record["fixed"]),
        "energy": torch.tensor(record["energy"], dtype=torch.float64),
        "forces": torch.from_numpy(record["forces"]),
        "sid": torch.tensor(record["sid"]),
        "fid": torch.tensor(record["fid"]),
    }
