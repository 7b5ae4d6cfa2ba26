"""Catch GPU faults on a CPU: a stand-in accelerator that refuses device mixing and counts host syncs.

Inside :class:`DeviceCheck`, ``DEVICE`` (``torch.device("meta")``) behaves like a GPU whose
tensors hold real data: every tensor moved or created there is a :class:`DeviceTensor` that wraps
a CPU tensor and reports ``device == meta``, so code takes its non-CPU branches, computes real
numbers, and each fault below shows up the way it would on CUDA, or more strictly:

==================  ==================================================================================
fault               what the check does
==================  ==================================================================================
device mixing       an op that meets a device tensor and a host tensor of one or more dimensions
                    raises :class:`DeviceMixingError` (CUDA raises too; 0-dim host tensors are
                    scalars there and pass). Advanced-indexing with a host index is allowed but
                    counted as a blocking copy, because CUDA copies the index synchronously.
host reads          ``.item()``, ``float()``, ``int()``, ``bool()``, ``.tolist()``, ``.cpu()``, a copy
                    to the host, ``torch.save`` of a device tensor, and ops whose output shape
                    depends on values (``nonzero``, boolean masks, ``unique``, ``masked_select``,
                    ``bincount``, ``repeat_interleave`` without ``output_size``) are recorded as
                    :class:`HostSync` events with the line of repository code that caused them.
blocking copies     a host -> device copy with ``non_blocking=False`` (``torch.tensor(x,
                    device=...)``, ``.to(device)``) is recorded too: on CUDA it waits for the stream.
``.numpy()``        raises, as it does for CUDA tensors.
==================  ==================================================================================

Syncs that a loop does on purpose (log steps, checkpoints, evaluation) run under
:func:`expected_sync` with a reason; :meth:`DeviceCheck.unexpected` lists the others. The same marks
serve on a GPU: with ``MOLRECIPES_SYNC_DEBUG=error`` the loop runs every step after the first under
``torch.cuda.set_sync_debug_mode("error")``, switched off inside :func:`expected_sync` blocks. The check
runs in one process (no process group: c10d cannot send wrapper tensors), without autocast
(there is no "meta" autocast) and without CUDA-only features (graphs, streams, the fp16 scaler).
Those paths stay for ``scripts/gpu_check.sh``.
"""
from __future__ import annotations

import contextlib
import os
import traceback
from collections import Counter
from dataclasses import dataclass
from typing import Iterator, List, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

aten = torch.ops.aten
DEVICE = torch.device("meta")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_EXPECTED: List[str] = []          # reasons of the enclosing expected_sync blocks (innermost last)
_ACTIVE: List["DeviceCheck"] = []

# ops whose output size depends on tensor values: the host must wait for the device
_DATA_DEPENDENT = {aten.nonzero.default, aten.masked_select.default, aten._unique2.default, aten.unique_dim.default,
                   aten.unique_consecutive.default, aten.bincount.default, aten.repeat_interleave.Tensor,
                   aten._local_scalar_dense.default, aten.is_nonzero.default, aten.equal.default,
                   aten.argwhere.default}
_INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
_BOOL_DTYPES = (torch.bool, torch.uint8)


class DeviceMixingError(RuntimeError):
    """A host tensor met a device tensor in one op (CUDA raises "Expected all tensors to be on the same device")."""


SYNC_DEBUG_ENV = "MOLRECIPES_SYNC_DEBUG"


@contextlib.contextmanager
def expected_sync(reason: str) -> Iterator[None]:
    """Mark a block whose host syncs are intended (a log step, a checkpoint, an evaluation); free outside checks.

    On CUDA under :func:`cuda_sync_debug`, the block also runs with ``torch.cuda.set_sync_debug_mode(0)``.
    """
    _EXPECTED.append(reason)
    debug = torch.cuda.get_sync_debug_mode() if _SYNC_DEBUG else 0
    if debug:
        torch.cuda.set_sync_debug_mode(0)
    try:
        yield
    finally:
        if debug:
            torch.cuda.set_sync_debug_mode(debug)
        _EXPECTED.pop()


_SYNC_DEBUG: List[bool] = []


@contextlib.contextmanager
def cuda_sync_debug(device) -> Iterator[None]:
    """On CUDA with ``MOLRECIPES_SYNC_DEBUG=warn|error``: PyTorch's sync debug mode for the block (the loop
    enters it after the first optimizer step), so any sync outside :func:`expected_sync` warns or raises."""
    mode = os.environ.get(SYNC_DEBUG_ENV, "")
    if not mode or torch.device(device).type != "cuda":
        yield
        return
    if mode not in ("warn", "error"):
        from runtime.errors import ConfigError

        raise ConfigError(f"{SYNC_DEBUG_ENV}={mode!r}: use warn or error")
    torch.cuda.set_sync_debug_mode(mode)
    _SYNC_DEBUG.append(True)
    try:
        yield
    finally:
        _SYNC_DEBUG.pop()
        torch.cuda.set_sync_debug_mode(0)


@dataclass(frozen=True)
class HostSync:
    kind: str                    # "read" (device -> host) or "blocking copy" (host -> device)
    op: str
    where: str                   # the innermost repository line that caused it
    expected: Optional[str]      # the reason of the enclosing expected_sync, or None

    def __str__(self) -> str:
        why = f" (expected: {self.expected})" if self.expected else ""
        return f"{self.kind} {self.op} at {self.where}{why}"


def _caller() -> str:
    for frame in reversed(traceback.extract_stack()[:-3]):
        if frame.filename.startswith("<"):                  # <frozen runpy>, <string>: no file of ours
            continue
        path = os.path.abspath(frame.filename)
        if path.startswith(_ROOT) and not path.endswith(("devicecheck.py",)) and "/tests/" not in path:
            return f"{os.path.relpath(path, _ROOT)}:{frame.lineno}"
    return "outside the repository"


def _record(kind: str, op) -> None:
    for check in _ACTIVE:
        check.syncs.append(HostSync(kind, str(op), _caller(), _EXPECTED[-1] if _EXPECTED else None))


class DeviceTensor(torch.Tensor):
    """A tensor "on" :data:`DEVICE` that holds a real CPU tensor (``elem``)."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor):
        out = torch.Tensor._make_wrapper_subclass(cls, elem.shape, strides=elem.stride(), dtype=elem.dtype,
                                                  layout=elem.layout, device=DEVICE,
                                                  requires_grad=elem.requires_grad)
        out.elem = elem
        return out

    def __repr__(self, *, tensor_contents=None) -> str:
        return f"DeviceTensor({self.elem!r})"

    def tolist(self):
        _record("read", "tolist")
        return self.elem.tolist()

    def numpy(self, *args, **kwargs):
        raise TypeError("can't convert a device tensor to numpy: copy it to the host first (.cpu()), once, "
                        "outside the step")

    def __reduce_ex__(self, protocol):
        _record("read", "torch.save")
        return self.elem.detach().clone().__reduce_ex__(protocol)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _dispatch(func, args, kwargs or {})


def _on_device(device) -> bool:
    return device is not None and torch.device(device).type == DEVICE.type


def _unwrap(t):
    return t.elem if isinstance(t, DeviceTensor) else t


def _wrap(out, inputs: dict):
    def wrap(t):
        if not isinstance(t, torch.Tensor) or isinstance(t, DeviceTensor):
            return t
        same = inputs.get(id(t))                            # in-place ops return their input
        return DeviceTensor(t) if same is None else same
    return tree_map(wrap, out)


def _dispatch(func, args, kwargs):
    flat, _ = tree_flatten((args, kwargs))
    device_args = [t for t in flat if isinstance(t, DeviceTensor)]
    for t in flat:
        if isinstance(t, torch.Tensor) and not isinstance(t, DeviceTensor) and t.device.type == DEVICE.type:
            raise RuntimeError(f"{func}: a data-less meta tensor reached the device check (made by a path it does not "
                               "intercept); create it on the host and move it with .to(device)")
    inputs = {id(t.elem): t for t in device_args}
    uargs, ukwargs = tree_map(_unwrap, args), tree_map(_unwrap, kwargs)
    target = kwargs.get("device")

    if func in (aten._to_copy.default, aten.copy_.default, aten._copy_from.default):
        return _move(func, args, kwargs, uargs, ukwargs, target)
    if _on_device(target):                                   # a factory (zeros, arange, ...) on the device
        ukwargs = {**ukwargs, "device": torch.device("cpu")}
        return _wrap(func(*uargs, **ukwargs), {})
    if device_args:
        host = [t for t in flat if isinstance(t, torch.Tensor) and not isinstance(t, DeviceTensor) and t.dim() > 0]
        if host and func in _INDEXING:
            _record("blocking copy", f"{func} with a host index")
        elif host:
            shapes = ", ".join(str(tuple(t.shape)) for t in host)
            raise DeviceMixingError(f"{func} got device tensors and host tensor(s) of shape {shapes} at {_caller()}: "
                                    "move them to one device")
        if func in _DATA_DEPENDENT and not (func is aten.repeat_interleave.Tensor and kwargs.get("output_size")):
            _record("read", func)
        elif func in _INDEXING and any(isinstance(t, torch.Tensor) and t.dtype in _BOOL_DTYPES
                                       for t in tree_flatten(args[1])[0]):
            _record("read", f"{func} with a boolean mask")
    out = func(*uargs, **ukwargs)
    return _wrap(out, inputs) if device_args else out


def _move(func, args, kwargs, uargs, ukwargs, target):
    if func is aten._to_copy.default:
        src = args[0]
        to_device = _on_device(target) or (target is None and isinstance(src, DeviceTensor))
        if to_device:
            if not isinstance(src, DeviceTensor) and not kwargs.get("non_blocking") and src.numel():
                _record("blocking copy", "to(device)")
            return DeviceTensor(func(*uargs, **{**ukwargs, "device": torch.device("cpu")}))
        if isinstance(src, DeviceTensor):
            _record("read", "to(cpu)")
        return func(*uargs, **ukwargs)
    # copy_(dst, src, non_blocking); _copy_from(src, dst, non_blocking)
    dst, src = (args[1], args[0]) if func is aten._copy_from.default else (args[0], args[1])
    if isinstance(src, DeviceTensor) and not isinstance(dst, DeviceTensor):
        _record("read", "copy to the host")
    elif isinstance(dst, DeviceTensor) and not isinstance(src, DeviceTensor):
        blocking = not (len(args) > 2 and args[2]) and not kwargs.get("non_blocking")
        if blocking and src.numel():
            _record("blocking copy", "copy_ to the device")
    func(*uargs, **ukwargs)
    return dst


class _Mode(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _dispatch(func, args, kwargs or {})


def _tensor_factory(original):
    """``torch.tensor``/``torch.as_tensor`` build device tensors through a path no dispatch mode sees:
    build on the host, then copy (a blocking copy, as on CUDA)."""
    def factory(data, *args, device=None, **kwargs):
        if not _on_device(device):
            return original(data, *args, device=device, **kwargs)
        return original(data, *args, **kwargs).to(DEVICE)
    return factory


def _generator_class(original):
    """A generator "on" the device draws on the host; factories then copy its numbers to the device."""
    class Generator(original):
        def __new__(cls, device="cpu"):
            return original.__new__(cls, "cpu" if _on_device(device) else device)

        def __init__(self, device="cpu"):
            pass
    return Generator


class DeviceCheck:
    """Run code on the stand-in device (see the module table); ``syncs`` lists every host sync seen.

    Also makes ``runtime.distributed`` report :data:`DEVICE` as this process's device, so an entry
    point's ``main`` trains, evaluates and predicts there unchanged.
    """

    device = DEVICE

    def __init__(self):
        self.syncs: List[HostSync] = []
        self._mode = _Mode()
        self._saved = {}

    def __enter__(self) -> "DeviceCheck":
        import runtime.distributed as rd

        self._saved = {"tensor": torch.tensor, "as_tensor": torch.as_tensor, "Generator": torch.Generator,
                       "env": rd._ENV}
        torch.Generator = _generator_class(self._saved["Generator"])
        torch.tensor = _tensor_factory(self._saved["tensor"])
        torch.as_tensor = _tensor_factory(self._saved["as_tensor"])
        rd._ENV = rd.DistEnv(rank=0, world_size=1, local_rank=0, device=DEVICE)   # init_distributed returns it
        _ACTIVE.append(self)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        import runtime.distributed as rd

        self._mode.__exit__(*exc)
        _ACTIVE.remove(self)
        torch.tensor, torch.as_tensor = self._saved["tensor"], self._saved["as_tensor"]
        torch.Generator = self._saved["Generator"]
        rd._ENV = self._saved["env"]

    def unexpected(self, since: int = 0) -> List[HostSync]:
        """The host syncs outside every :func:`expected_sync` block (from the ``since``-th sync on)."""
        return [s for s in self.syncs[since:] if s.expected is None]

    @contextlib.contextmanager
    def track_steps(self) -> Iterator[List[int]]:
        """Yield a list that receives ``len(self.syncs)`` after every optimizer step of a
        :class:`runtime.loop.TrainLoop` built inside the block: ``unexpected(since=marks[0])`` are
        the unintended syncs after the first (warm-up) step, evaluation and checkpoints included."""
        from runtime import loop

        marks: List[int] = []
        original = loop.TrainLoop.__init__

        def init(loop_self, *args, **kwargs):
            original(loop_self, *args, **kwargs)
            step = loop_self.optimizer_step

            def counted_step(*step_args):
                out = step(*step_args)
                marks.append(len(self.syncs))
                return out
            loop_self.optimizer_step = counted_step

        loop.TrainLoop.__init__ = init
        try:
            yield marks
        finally:
            loop.TrainLoop.__init__ = original

    def report(self, syncs: Optional[List[HostSync]] = None) -> str:
        """One line per distinct sync, with its count."""
        counts = Counter(self.syncs if syncs is None else syncs)
        return "\n".join(f"{n:5d} x {s}" for s, n in counts.items()) or "no host syncs"
