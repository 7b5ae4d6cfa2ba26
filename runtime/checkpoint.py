"""Atomic, resumable checkpoints.

A checkpoint is written to a temporary file in the target directory, flushed to disk and renamed
over the target, so a crash never leaves a half-written file under the checkpoint's name. It holds
the model, optimizer, scheduler and loss-scaler states, the RNG states, epoch and step.
"""
from __future__ import annotations

import glob
import os
import pickle
import random
import re
import zipfile
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch import nn

from runtime.distributed import get_rank, is_main_process, unwrap
from runtime.io import atomic_write

FORMAT = "molrecipes-checkpoint-v1"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: corrupt, truncated, or not matching the model."""


def _rng_state() -> Dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_torch_save(obj: Any, path: str) -> None:
    """torch.save to a temp file next to ``path``, fsync, then rename over ``path``."""
    with atomic_write(path) as f:
        torch.save(obj, f)


def _numbered(path: str, step: int) -> str:
    stem, ext = os.path.splitext(path)
    return f"{stem}_step{step:09d}{ext or '.pt'}"


def save_checkpoint(path: str, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
                    scheduler: Any = None, precision: Any = None, epoch: int = 0, step: int = 0,
                    extra: Optional[Dict[str, Any]] = None, keep_last: Optional[int] = None) -> Optional[str]:
    """Write a resumable checkpoint to ``path`` (rank 0 only; other ranks return None).

    With ``keep_last=N`` a numbered copy ``<stem>_step<step><ext>`` is kept beside ``path`` and only
    the newest N numbered copies survive; ``path`` always holds the latest.
    """
    if not is_main_process():
        return None
    state = {
        "format": FORMAT,
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "precision": precision.state_dict() if precision is not None else None,
        "epoch": int(epoch),
        "step": int(step),
        "rng": _rng_state(),
        "extra": extra or {},
    }
    atomic_torch_save(state, path)
    if keep_last:
        numbered = _numbered(path, step)
        tmp = numbered + ".tmp"
        try:
            os.link(path, tmp)
        except OSError:
            import shutil
            shutil.copyfile(path, tmp)
        os.replace(tmp, numbered)
        stem, ext = os.path.splitext(path)
        pattern = re.compile(re.escape(os.path.basename(stem)) + r"_step\d{9}" + re.escape(ext or ".pt") + "$")
        copies = sorted(p for p in glob.glob(f"{glob.escape(stem)}_step*") if pattern.match(os.path.basename(p)))
        for old in copies[:-keep_last]:
            os.remove(old)
    return path


def read_checkpoint(path: str, map_location: Any = "cpu") -> Dict[str, Any]:
    """Load and validate a checkpoint file without applying it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a molrecipes checkpoint (missing format marker {FORMAT!r})")
    return state


def load_checkpoint(path: str, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
                    scheduler: Any = None, precision: Any = None, map_location: Any = "cpu",
                    strict: bool = True, restore_rng: bool = True) -> Dict[str, Any]:
    """Restore states saved by :func:`save_checkpoint`; returns ``{"epoch", "step", "extra"}``.

    RNG states are those of rank 0 at save time; they are restored on rank 0 only, other ranks
    keep their own ``seed + rank`` streams.
    """
    state = read_checkpoint(path, map_location)
    target = unwrap(model)
    own = target.state_dict()
    saved = state["model"]
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
        except (ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"checkpoint {path}: cannot restore the {name} state ({err})") from err
    if restore_rng and state.get("rng") and get_rank() == 0:
        _set_rng_state(state["rng"])
    return {"epoch": state["epoch"], "step": state["step"], "extra": state.get("extra", {})}
