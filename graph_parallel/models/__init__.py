"""DimeNet++ and GemNet-T/dT in graph-parallel form, and a registry of presets."""
from dataclasses import asdict, replace
from typing import Tuple

from torch import nn

from graph_parallel.models.common import count_parameters, edge_kind, edge_kind_of, he_orthogonal_, model_graph, \
    predict
from graph_parallel.models.dimenet_pp import PRESETS as DIMENETPP_PRESETS, DimeNetPP, DimeNetPPConfig
from graph_parallel.models.gemnet import (PRESETS as GEMNET_PRESETS, GemNetConfig, GemNetT, fit_scale_factors,
                                          load_scale_file, save_scale_file, scale_factors_by_name)

GEMNET_DT_PRESETS = {k: replace(v, direct_forces=True) for k, v in GEMNET_PRESETS.items()}
MODELS = {"dimenetpp": (DimeNetPP, DIMENETPP_PRESETS), "gemnet_t": (GemNetT, GEMNET_PRESETS),
          "gemnet_dt": (GemNetT, GEMNET_DT_PRESETS)}
CONFIGS = {"dimenetpp": DimeNetPPConfig, "gemnet_t": GemNetConfig, "gemnet_dt": GemNetConfig}


def _known_model(name: str) -> None:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")


def preset_config(name: str, preset: str = "base", **overrides) -> dict:
    """The full config of a model by name and preset, with overrides, as ``model.config_dict()`` gives it."""
    _known_model(name)
    presets = MODELS[name][1]
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r} for {name}; choose from {sorted(presets)}")
    cfg = presets[preset]
    unknown = set(overrides) - set(cfg.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown {name} config field(s) {sorted(unknown)}")
    return asdict(replace(cfg, **overrides))


def build_model(name: str, preset: str = "base", **overrides) -> nn.Module:
    """A model by name (``dimenetpp``, ``gemnet_t``, ``gemnet_dt``) and preset, with config overrides."""
    return model_from_config(name, preset_config(name, preset, **overrides))


def graph_kinds(name: str, config: dict) -> Tuple[str, str]:
    """(edge kind, triplet kind) of the batches model ``name`` with ``config`` reads, without building
    it: what :func:`edge_kind` and ``model.triplet_kind`` say of the built model."""
    cls = MODELS[name][0]
    return edge_kind_of(cls, config_from_dict(name, config)), cls.triplet_kind


def config_from_dict(name: str, config: dict):
    """The config dataclass of model ``name`` from a full config dict (as checkpoints store it)."""
    _known_model(name)
    cfg_cls = CONFIGS[name]
    unknown = set(config) - set(cfg_cls.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown {name} config field(s) {sorted(unknown)}")
    return cfg_cls(**config)


def model_from_config(name: str, config: dict) -> nn.Module:
    """A model by name from a full config dict (``model.config_dict()``, as checkpoints store it)."""
    return MODELS[name][0](config_from_dict(name, config))


__all__ = ["build_model", "preset_config", "config_from_dict", "graph_kinds", "model_from_config", "count_parameters",
           "predict", "model_graph", "edge_kind", "edge_kind_of", "he_orthogonal_", "MODELS", "CONFIGS", "DimeNetPP",
           "DimeNetPPConfig", "GemNetT", "GemNetConfig",
           "fit_scale_factors", "load_scale_file", "save_scale_file", "scale_factors_by_name"]
