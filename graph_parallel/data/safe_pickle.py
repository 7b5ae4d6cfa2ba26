"""A restricted unpickler for LMDB records: OC20's pickled PyG ``Data`` and our own dicts of arrays.

``pickle.loads`` on a downloaded file runs whatever the file names. Every LMDB record in this
package is read by :func:`load_record` instead, which resolves only these globals:

=========================================================  ====================================
global in the pickle                                       becomes
=========================================================  ====================================
``torch_geometric.data.data.Data``                         :class:`PygData`, a plain stand-in
``torch_geometric.data.storage.GlobalStorage``             :class:`PygStorage`, a plain stand-in
``torch_geometric.data.data.DataEdgeAttr/DataTensorAttr``  a marker class (PyG >= 2.3 stores them)
``torch._utils._rebuild_tensor_v2``                        a CPU tensor over the storage below
``torch.storage._load_from_bytes``                         the storage, via ``torch.load(...,
                                                           weights_only=True)`` (torch's own
                                                           function would load unrestricted)
``collections.OrderedDict``                                itself (a tensor's empty hook dict)
``_codecs.encode`` (latin1 only)                           ``bytes`` in protocol-2 pickles
numpy ``ndarray``, ``dtype``, ``_reconstruct``,            numpy arrays and scalars, from both
``_frombuffer``, ``scalar`` (``numpy.core``/``numpy._core``)  numpy 1 and numpy 2 module names
=========================================================  ====================================

Any other global, and any persistent id, is refused with a :class:`DataError` naming the file,
the key and the refused global. Torch tensors come back as numpy arrays, so a record is a plain
dict: PyG >= 2.0 pickles keep the fields in ``Data._store._mapping``; PyG < 2.0 pickles (the
original OC20 LMDBs) keep them in ``Data.__dict__`` next to unused ``None`` attributes, which are
dropped, as fairchem's ``pyg2_data_transform`` does.
"""
from __future__ import annotations

import collections
import io
import pickle
from typing import Any, Dict

import numpy as np
import torch

from runtime.errors import DataError


class PygData:
    """Stands in for ``torch_geometric.data.Data`` while unpickling; holds the pickled ``__dict__``."""


class PygStorage:
    """Stands in for ``torch_geometric.data.storage.GlobalStorage``; holds ``_mapping``."""


class PygMarker:
    """Stands in for PyG's attribute-description classes, which Data pickles only as references."""


class _Refused(Exception):
    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


def _storage_from_bytes(data: bytes):
    if not isinstance(data, (bytes, bytearray)):
        raise _Refused(f"torch.storage._load_from_bytes of a {type(data).__name__}")
    storage = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise _Refused(f"torch.storage._load_from_bytes giving a {type(storage).__name__}")
    return storage


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    """Like ``torch._utils._rebuild_tensor_v2``, without hooks, grad or metadata, on CPU."""
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise _Refused(f"torch._utils._rebuild_tensor_v2 over a {type(storage).__name__}")
    return torch._utils._rebuild_tensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _latin1_bytes(text, encoding="latin1"):
    """Protocol-2 pickles store ``bytes`` as ``_codecs.encode(str, 'latin1')``; only that is allowed."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


_RECONSTRUCT = np.ndarray((0,)).__reduce__()[0]          # numpy.(_)core.multiarray._reconstruct
_SCALAR = np.float64(0).__reduce__()[0]                  # numpy.(_)core.multiarray.scalar
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]            # numpy.(_)core.numeric._frombuffer

_ALLOWED = {
    ("torch_geometric.data.data", "Data"): PygData,
    ("torch_geometric.data.storage", "GlobalStorage"): PygStorage,
    ("torch_geometric.data.data", "DataEdgeAttr"): PygMarker,
    ("torch_geometric.data.data", "DataTensorAttr"): PygMarker,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _latin1_bytes,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_core}.multiarray", "_reconstruct")] = _RECONSTRUCT
    _ALLOWED[(f"{_core}.multiarray", "scalar")] = _SCALAR
    _ALLOWED[(f"{_core}.numeric", "_frombuffer")] = _FROMBUFFER


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None

    def persistent_load(self, pid):
        raise _Refused(f"persistent id {pid!r}")


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.numpy() if value.dtype != torch.bfloat16 else value.float().numpy()
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def _fields(obj: Any, where: str) -> Dict[str, Any]:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, PygData):
        store = obj.__dict__.get("_store")
        if store is not None:                             # PyG >= 2.0
            mapping = getattr(store, "_mapping", None) if isinstance(store, PygStorage) else None
            if not isinstance(mapping, dict):
                raise DataError(f"{where}: PyG Data record without a field mapping in its '_store'")
            return {k: _plain(v) for k, v in mapping.items()}
        return {k: _plain(v) for k, v in obj.__dict__.items()       # PyG < 2.0
                if v is not None and not (k.startswith("__") and k.endswith("__"))}
    raise DataError(f"{where}: record is a pickled {type(obj).__name__}, expected a dict or a PyG Data object")


def load_record(raw: bytes, where: str) -> Any:
    """Unpickle one stored value with the allow-list above; dicts and PyG Data become plain dicts."""
    try:
        obj = _RestrictedUnpickler(io.BytesIO(raw)).load()
    except _Refused as exc:
        raise DataError(f"{where}: refused to unpickle global '{exc.what}' (only PyG Data, torch tensors and "
                        f"numpy arrays are allowed); the file is not an OC20/S2EF LMDB or was tampered with") from None
    except Exception as exc:  # any damage: truncated pickle, bad opcode, bad tensor bytes, ...
        raise DataError(f"{where}: damaged record, cannot unpickle it ({type(exc).__name__}: {exc}); "
                        "re-download / re-copy or rebuild the file") from exc
    if isinstance(obj, (dict, PygData)):
        return _fields(obj, where)
    return obj
