"""Atomic, safe, resumable checkpoints.

Writing: the state goes to a temporary file beside the target, is fsynced and renamed over it
(:func:`runtime.io.atomic_write`), so a crash or a SIGKILL at any moment leaves the previous
checkpoint intact; the next successful save removes temporary files that a killed save left.

Reading: files are loaded with ``torch.load(weights_only=True)``. A checkpoint holds only tensors
and plain data (dicts, lists, tuples, strings, numbers), so nothing in it can run code; a file that
carries any other pickled object is refused with :class:`CheckpointError` before anything of it runs.

Layout (``molrecipes-checkpoint-v2``)::

    format     "molrecipes-checkpoint-v2"
    meta       what the checkpoint is: {"recipe", "model", "config", "dataset", "task", ...};
               compared on load against what the run expects (``expect=``)
    model      state_dict
    optimizer, scheduler, precision   state_dicts (or None)
    position   {"epoch", "batch", "step"}: epoch, batches of that epoch consumed, optimizer steps
    extra      the recipe's own plain data (normalisers, EMA weights, scale factors, ...)

No RNG state: the training loop reseeds from the position at every step, so a resumed run draws
the same numbers without one (files written before carry an ``rng`` entry, ignored).
"""
from __future__ import annotations

import glob
import os
import pickle
import re
import shutil
import zipfile
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional

import numpy as np
import torch
from torch import nn

from runtime.distributed import is_main_process, unwrap
from runtime.errors import CheckpointError, MissingFileError
from runtime.io import atomic_write, fault_point

FORMAT = "molrecipes-checkpoint-v2"
_OLD_FORMATS = ("molrecipes-checkpoint-v1",)

__all__ = ["CheckpointError", "FORMAT", "save_checkpoint", "read_checkpoint", "load_checkpoint",
           "check_meta", "atomic_torch_save"]


def atomic_torch_save(obj: Any, path: str) -> None:
    """torch.save to a temp file next to ``path``, fsync, then rename over ``path``."""
    with atomic_write(path) as f:
        torch.save(obj, f)


def _numbered(path: str, step: int) -> str:
    stem, ext = os.path.splitext(path)
    return f"{stem}_step{step:09d}{ext or '.pt'}"


def save_checkpoint(path: str, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
                    scheduler: Any = None, precision: Any = None, *, meta: Optional[Dict[str, Any]] = None,
                    epoch: int = 0, step: int = 0, batch: int = 0, position: Optional[Dict[str, Any]] = None,
                    extra: Optional[Dict[str, Any]] = None, keep_last: Optional[int] = None) -> Optional[str]:
    """Write a resumable checkpoint to ``path`` (rank 0 only; other ranks return None).

    ``epoch``/``batch``/``step`` are the position to resume from: ``batch`` batches of ``epoch`` are
    done (0 at an epoch boundary) and ``step`` optimizer steps were taken. With ``keep_last=N`` a
    numbered copy ``<stem>_step<step><ext>`` is kept beside ``path`` and only the newest N survive.
    ``position`` (``runtime.loop.Position.to_dict()``) replaces ``epoch``/``batch``/``step`` when given.
    """
    if not is_main_process():
        return None
    if position is None:
        position = {"epoch": int(epoch), "batch": int(batch), "step": int(step)}
    step = int(position["step"])
    state = {
        "format": FORMAT,
        "meta": dict(meta or {}),
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "precision": precision.state_dict() if precision is not None else None,
        "position": dict(position),
        "extra": extra or {},
    }
    atomic_torch_save(state, path)
    fault_point("checkpoint:saved")
    if keep_last:
        numbered = _numbered(path, step)
        tmp = numbered + ".tmp"
        stem, ext = os.path.splitext(path)
        for stale in glob.glob(f"{glob.escape(stem)}_step*.tmp"):  # left by a save that was killed
            os.remove(stale)
        try:
            os.link(path, tmp)
        except OSError:
            shutil.copyfile(path, tmp)
        os.replace(tmp, numbered)
        pattern = re.compile(re.escape(os.path.basename(stem)) + r"_step\d{9}" + re.escape(ext or ".pt") + "$")
        copies = sorted(p for p in glob.glob(f"{glob.escape(stem)}_step*") if pattern.match(os.path.basename(p)))
        for old in copies[:-keep_last]:
            os.remove(old)
    return path


def _numpy_globals():
    """What v1 checkpoints (NumPy RNG arrays) need beyond plain data; no code runs when these load."""
    core = getattr(np, "_core", None) or np.core
    names = [core.multiarray._reconstruct, np.ndarray, np.dtype]
    names += [getattr(np.dtypes, n) for n in ("UInt32DType", "Int64DType", "Float64DType") if hasattr(np, "dtypes")]
    return names


def read_checkpoint(path: str, map_location: Any = "cpu") -> Dict[str, Any]:
    """Load and validate a checkpoint file safely (``weights_only=True``) without applying it."""
    if not path or not os.path.isfile(path):
        raise MissingFileError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001 - not a zip checkpoint at all
            unsafe = []
        if unsafe:
            raise CheckpointError(f"checkpoint {path} was refused: it carries pickled objects other than tensors "
                                  f"and plain data ({', '.join(unsafe[:5])}); nothing of it was run. Only load "
                                  "checkpoints written by molrecipes") from None
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated, or not a torch file "
                              f"({_first_sentence(err)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(err).__name__}: "
                              f"{_first_sentence(err)})") from None
    if not isinstance(state, dict) or state.get("format") not in (FORMAT,) + _OLD_FORMATS:
        raise CheckpointError(f"{path} is not a molrecipes checkpoint (no format marker {FORMAT!r}); "
                              "to use foreign weights, convert them first (see each recipe's README)")
    if state["format"] != FORMAT:  # v1: position at the top level, identity inside extra
        state["position"] = {"epoch": state.get("epoch", 0), "batch": 0, "step": state.get("step", 0)}
        state.setdefault("meta", {})
    return state


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def config_differences(saved: Mapping[str, Any], wanted: Mapping[str, Any],
                       keys: Optional[Iterable[str]] = None,
                       describe: Optional[Callable[[Any], str]] = None) -> List[str]:
    """``"key: checkpoint has X, this run has Y"`` for each key (default: both sides' keys, sorted) on
    which a checkpoint's config or identity and this run's differ: every recipe's identity check words
    its refusal with this."""
    describe = describe or _describe
    keys = sorted(set(saved) | set(wanted)) if keys is None else keys
    return [f"{key}: checkpoint has {describe(saved.get(key))}, this run has {describe(wanted.get(key))}"
            for key in keys if saved.get(key) != wanted.get(key)]


def check_meta(path: str, meta: Mapping[str, Any], expect: Mapping[str, Any]) -> None:
    """Refuse a checkpoint whose identity differs from ``expect`` on any key ``expect`` names."""
    differences = config_differences(meta, expect, keys=list(expect))
    if differences:
        raise CheckpointError(f"checkpoint {path} does not match this run: " + "; ".join(differences))


def load_checkpoint(path: str, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
                    scheduler: Any = None, precision: Any = None, map_location: Any = "cpu",
                    strict: bool = True, expect: Optional[Mapping[str, Any]] = None,
                    state: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Restore states saved by :func:`save_checkpoint`; returns ``{"epoch", "batch", "step", "position",
    "meta", "extra"}`` (``position`` is the saved dict, for ``runtime.loop.Position.from_dict``).

    ``expect`` names identity fields (recipe, model, config, task, dataset, ...) the checkpoint must
    match. ``state`` is an already read checkpoint (from :func:`read_checkpoint`) to apply.
    """
    state = read_checkpoint(path, map_location) if state is None else state
    if expect:
        check_meta(path, state.get("meta", {}), expect)
    target = unwrap(model)
    own = target.state_dict()
    saved = state["model"]
    if not isinstance(saved, dict):
        raise CheckpointError(f"checkpoint {path} holds no model state_dict")
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in saved.items() if k in own and hasattr(v, "shape") and v.shape != own[k].shape]
    if mismatched:
        raise CheckpointError(f"checkpoint {path} does not match the model; shape differences: "
                              + "; ".join(mismatched[:5]) + (" ..." if len(mismatched) > 5 else ""))
    missing = sorted(set(own) - set(saved))
    unexpected = sorted(set(saved) - set(own))
    if strict and (missing or unexpected):
        raise CheckpointError(f"checkpoint {path} does not match the model: missing keys {missing[:5]}, "
                              f"unexpected keys {unexpected[:5]}")
    target.load_state_dict(saved, strict=strict)
    for name, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("precision", precision)):
        if obj is None:
            continue
        if state.get(name) is None:
            raise CheckpointError(f"checkpoint {path} holds no {name} state to resume from")
        try:
            obj.load_state_dict(state[name])
        except (ValueError, KeyError, RuntimeError, TypeError) as err:
            raise CheckpointError(f"checkpoint {path}: cannot restore the {name} state ({err})") from err
    position = state["position"]
    return {"epoch": int(position["epoch"]), "batch": int(position.get("batch", 0)), "step": int(position["step"]),
            "position": dict(position), "meta": state.get("meta", {}), "extra": state.get("extra", {})}


def check_mid_epoch_resume(path: str, extra: Mapping[str, Any], position: Any, batch_size: int,
                           replicas: int) -> None:
    """Mid-epoch, the consumed batches are skipped by count (``position.batch``): the batch size and
    the number of data-parallel replicas must be those that consumed them. Checkpoints record both in
    ``extra`` (``batch_size``, ``replicas``; older ones ``dp_size`` or ``world_size``)."""
    saved = (extra.get("batch_size"), extra.get("replicas", extra.get("dp_size", extra.get("world_size"))))
    if position.batch and saved != (batch_size, replicas):
        raise CheckpointError(f"checkpoint {path} was written mid-epoch ({position.batch} batches into epoch "
                              f"{position.epoch}) with --batch_size {saved[0]} on {saved[1]} process(es) (data-"
                              f"parallel replicas); this run has --batch_size {batch_size} on {replicas}: resume "
                              "with those, or from a checkpoint written at an epoch end")


def _first_sentence(err: BaseException) -> str:
    """The cause in ``err``'s message, as whole sentences: PyTorch's weights-only load errors wrap the
    unpickler's reason (``WeightsUnpickler error: ...``) in paragraphs of advice about ``weights_only``
    that do not apply to a damaged file."""
    text, marker = str(err), "WeightsUnpickler error:"
    if marker in text:
        text = next((line for line in text.split(marker, 1)[1].splitlines() if line.strip()), text)
    text = " ".join(text.split())
    end = text.find(". ")
    return text if end < 0 else text[:end + 1]
