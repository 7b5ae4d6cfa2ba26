"""Model checkpoints of graph_parallel: what a trained (or converted) model needs to be used again.

Written with :func:`runtime.checkpoint.save_checkpoint` and read with ``weights_only=True``::

    meta   {"recipe": "graph_parallel", "model": "dimenetpp" | "gemnet_t" | "gemnet_dt",
            "config": model.config_dict()}
    model  state_dict (GemNet scaling factors included: they are buffers)
    extra  {"normalizer": {"mean", "std"}   energies are learned as (E - mean) / std, forces as F / std
            "cutoff", "max_neighbors"        the radius graph the model was trained on
            "preset"                         preset name or None
            "ema"                            None, or an AveragedModel state_dict ("module.<key>", "n_averaged")
            "source"}                        free text: where the weights came from

Training checkpoints (graph_parallel.train) add optimizer, scheduler and position to the same layout.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from runtime.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from runtime.errors import CheckpointError

from graph_parallel.models import MODELS, config_from_dict, model_from_config

RECIPE = "graph_parallel"


def _normalizer_dict(normalizer: Union[Mapping[str, float], Any]) -> Dict[str, float]:
    if not isinstance(normalizer, Mapping):
        normalizer = normalizer.state_dict()           # graph_parallel.losses.Normalizer
    return {"mean": float(normalizer["mean"]), "std": float(normalizer["std"])}


def write_model_checkpoint(path: str, model: nn.Module, name: str, normalizer, cutoff: float, max_neighbors: int,
                           preset: Optional[str] = None, source: Optional[str] = None) -> Optional[str]:
    """Save ``model`` (no optimizer state) in the graph_parallel checkpoint layout; rank 0 writes."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    meta = {"recipe": RECIPE, "model": name, "config": model.config_dict()}
    extra = {"normalizer": _normalizer_dict(normalizer), "cutoff": float(cutoff), "max_neighbors": int(max_neighbors),
             "preset": preset, "ema": None, "source": source}
    return save_checkpoint(path, model, meta=meta, extra=extra)


def model_from_checkpoint(path: str, device="cpu", use_ema: bool = True) -> Tuple[nn.Module, Dict[str, Any]]:
    """Rebuild the model of a graph_parallel checkpoint (EMA weights when present and ``use_ema``), in eval mode.

    Returns ``(model, info)``; ``info`` holds name, normalizer, cutoff, max_neighbors, preset,
    ema (whether EMA weights were loaded), meta and extra.
    """
    state = read_checkpoint(path, map_location="cpu")
    meta, extra = state.get("meta") or {}, state.get("extra") or {}
    if meta.get("recipe") not in (None, RECIPE):
        raise CheckpointError(f"checkpoint {path} is a {meta['recipe']!r} checkpoint, not a graph_parallel one")
    name, config = checkpoint_model(path, state)
    check_buildable(path, name, config)
    model = model_from_config(name, config)
    load_checkpoint(path, model, state=state)
    ema_loaded = False
    ema = extra.get("ema")
    if use_ema and ema:
        weights = {k[len("module."):]: v for k, v in ema.items() if k.startswith("module.")}
        own = model.state_dict()
        if set(weights) != set(own) or any(weights[k].shape != own[k].shape for k in own):
            missing, unexpected = sorted(set(own) - set(weights))[:5], sorted(set(weights) - set(own))[:5]
            raise CheckpointError(f"checkpoint {path}: its EMA weights do not match the model (keys missing "
                                  f"{missing}, unexpected {unexpected}, or shapes differ)")
        model.load_state_dict(weights)
        ema_loaded = True
    for key in ("normalizer", "cutoff", "max_neighbors"):
        if extra.get(key) is None:
            raise CheckpointError(f"checkpoint {path} has no {key!r} in its extra data")
    info = {"name": name, "normalizer": _normalizer_dict(extra["normalizer"]), "cutoff": float(extra["cutoff"]),
            "max_neighbors": int(extra["max_neighbors"]), "preset": extra.get("preset"), "ema": ema_loaded,
            "meta": meta, "extra": extra}
    return model.to(torch.device(device)).eval(), info


def checkpoint_model(path: str, state: Mapping[str, Any]) -> Tuple[str, Dict[str, Any]]:
    """``(name, config)`` of the model a graph_parallel checkpoint holds (older training checkpoints
    record them in ``extra``); one that does not say is refused. The caller has checked the recipe."""
    meta, extra = state.get("meta") or {}, state.get("extra") or {}
    name = meta.get("model") or extra.get("model_name")
    config = meta.get("config") or extra.get("config")
    if name not in MODELS or not isinstance(config, dict):
        raise CheckpointError(f"checkpoint {path} does not say which graph_parallel model it holds (meta 'model' "
                              f"{name!r}, 'config' {type(config).__name__}); write it with "
                              "graph_parallel.checkpoints.write_model_checkpoint")
    return name, dict(config)


def check_buildable(path: str, name: str, config: Dict[str, Any]) -> None:
    """Refuse a checkpoint config that no longer makes a ``name`` model (fields renamed or removed)."""
    try:
        config_from_dict(name, config)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path}: cannot build {name} from its config ({err})") from None
