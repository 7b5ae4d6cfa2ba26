"""Import pretrained weights: PyG DimeNet++ state_dicts and fairchem DimeNet++ / GemNet-T / GemNet-dT checkpoints.

    python -m graph_parallel.convert --from pyg --model dimenetpp pyg_dimenetpp.pt --cutoff 5 --output ours.pt
    python -m graph_parallel.convert --from fairchem gemnet_t_direct_h512_all.pt --output ours.pt

Sizes (blocks, widths, bases, element rows) are read from tensor shapes; cutoff, envelope
exponent and max_neighbors come from the fairchem checkpoint's config or from flags. The output
is this project's checkpoint (:func:`graph_parallel.checkpoints.write_model_checkpoint`).
Anything that does not map -- a missing or unexpected key, a shape that disagrees with the
inferred sizes, an unsupported basis or activation -- is refused with :class:`CheckpointError` or
:class:`ConfigError` naming the keys.

Conventions that differ, and how each is mapped exactly:

=====================  ==========================================  =====================================
what                   PyG / fairchem                              here (conversion)
=====================  ==========================================  =====================================
DimeNet++ radial       u(x)/x sin(f x), x = d/c                    times sqrt(2/c)/c: weights reading the
                                                                   radial basis are divided by that
element embedding      row z (PyG/fairchem DimeNet++: 95 rows)     row z-1: rows 1.. are taken, 94 elements
DimeNet++ angle        supplementary angle pi - theta              interior angle theta: Y_l differs by
                                                                   (-1)^l, lin_sbf1 columns of odd l negated
fairchem DimeNet++     OutputPPBlock.lin_up has a bias;            config output_up_bias=True;
                       angle positions detached (forces lack the   detach_angles=True (``--full_angle_
                       angular term)                               gradients`` converts without it)
GemNet direction       V_st from source to target                  unit vector from target to source:
                                                                   direct-force head weights negated
GemNet bilinear        [trip, cbf, out]                            [cbf, trip, out] (permuted)
GemNet scale factors   parameter ``scale_factor``, 0 = unfitted    buffer ``scale``, 1 = identity
GemNet-dT force MLP    dense + residual layers                     config force_mlp_dense=True
GemNet edges           j->i with j < i plus reverses               config symmetric_edges="one_sided"
GemNet embedding       83 rows                                     config num_elements from the shape
=====================  ==========================================  =====================================

Foreign files are loaded with ``torch.load(weights_only=True)``; fairchem checkpoints that pickle
other objects need ``--allow_pickle`` (this runs the pickle: only for files you trust).
"""
from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from runtime.errors import CheckpointError, ConfigError, MissingFileError, run_main
from runtime.io import sha256_of

from graph_parallel.checkpoints import write_model_checkpoint
from graph_parallel.models import DimeNetPP, DimeNetPPConfig, GemNetConfig, GemNetT

__all__ = ["load_foreign", "dimenetpp_from_state_dict", "gemnet_from_fairchem", "convert_fairchem", "Converted",
           "main"]


# --------------------------------------------------------------------------------------------------
# reading foreign files
# --------------------------------------------------------------------------------------------------
def load_foreign(path, allow_pickle: bool = False) -> Dict[str, Any]:
    """A foreign checkpoint or state_dict as a dict; pickled objects only with ``allow_pickle``."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"input checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as err:  # noqa: BLE001 - refused pickles, corrupt files: one message either way
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:  # noqa: BLE001 - not a zip file
            unsafe = []
        if unsafe and not allow_pickle:
            raise CheckpointError(f"{path} pickles objects other than tensors and plain data "
                                  f"({', '.join(unsafe[:5])}); "
                                  "if you trust the file, rerun with --allow_pickle (loading it runs its pickle), "
                                  "or save its state_dict alone") from None
        raise CheckpointError(f"cannot read {path} as a torch file ({type(err).__name__}: "
                              f"{' '.join(str(err).split())[:200]})") from None
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state_dict or a checkpoint dict")
    return obj


def _strip_prefixes(state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Drop DataParallel/DDP ``module.`` prefixes (fairchem: ``module.module.``) and hydra ``backbone.``."""
    out = {}
    for key, value in state.items():
        while key.startswith("module."):
            key = key[len("module."):]
        out[key[len("backbone."):] if key.startswith("backbone.") else key] = value
    return out


def _count(state: Dict[str, Tensor], pattern: str) -> int:
    """Number of distinct integers matched by ``(\\d+)`` in ``pattern`` over the keys."""
    regex = re.compile(pattern)
    found = {int(m.group(1)) for k in state for m in [regex.match(k)] if m}
    if found and found != set(range(len(found))):
        raise CheckpointError(f"keys matching {pattern!r} are not numbered 0..n-1: {sorted(found)}")
    return len(found)


class _Mapper:
    """Fills this model's state_dict from foreign tensors, tracking which foreign keys were used."""

    def __init__(self, foreign: Dict[str, Tensor], where: str):
        self.foreign, self.where = foreign, where
        self.used: set = set()
        self.out: Dict[str, Tensor] = {}
        self.missing: List[str] = []

    def take(self, key: str) -> Optional[Tensor]:
        if key not in self.foreign:
            self.missing.append(key)
            return None
        self.used.add(key)
        return self.foreign[key]

    def put(self, ours: str, theirs: str, transform: Callable[[Tensor], Tensor] = lambda t: t) -> None:
        value = self.take(theirs)
        if value is not None:
            self.out[ours] = transform(value.detach().clone())

    def ignore(self, key: str) -> None:
        self.used.add(key)

    def load_into(self, model: nn.Module) -> nn.Module:
        own = model.state_dict()
        unexpected = sorted(set(self.foreign) - self.used)
        problems = []
        if self.missing:
            problems.append(f"missing keys {self.missing[:8]}" + (" ..." if len(self.missing) > 8 else ""))
        if unexpected:
            problems.append(f"unexpected keys {unexpected[:8]}" + (" ..." if len(unexpected) > 8 else ""))
        shapes = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in self.out.items()
                  if k in own and v.shape != own[k].shape]
        if shapes:
            problems.append("shape mismatches (converted vs expected from the inferred sizes) " + "; ".join(shapes[:5]))
        unfilled = sorted(set(own) - set(self.out))
        if unfilled and not problems:
            problems.append(f"no source for this model's keys {unfilled[:8]}")
        if problems:
            raise CheckpointError(f"{self.where} does not map onto this project's model: " + "; ".join(problems))
        dtype = next(iter(self.out.values())).dtype
        if dtype.is_floating_point:
            model.to(dtype)
        model.load_state_dict(self.out, strict=True)
        return model


def _shape(state: Dict[str, Tensor], key: str, where: str) -> Tuple[int, ...]:
    if key not in state:
        raise CheckpointError(f"{where} has no key {key!r}; is it the right kind of model (--from / --model)?")
    return tuple(state[key].shape)


# --------------------------------------------------------------------------------------------------
# DimeNet++ (PyG DimeNetPlusPlus and fairchem DimeNetPlusPlusWrap share the layout)
# --------------------------------------------------------------------------------------------------
def infer_dimenetpp_config(state: Dict[str, Tensor], where: str) -> Dict[str, Any]:
    num_radial = _shape(state, "rbf.freq", where)[0]
    rows, hidden = _shape(state, "emb.emb.weight", where)
    int_emb, _ = _shape(state, "interaction_blocks.0.lin_down.weight", where)
    basis_emb, _ = _shape(state, "interaction_blocks.0.lin_rbf1.weight", where)
    _, sbf_in = _shape(state, "interaction_blocks.0.lin_sbf1.weight", where)
    out_emb, _ = _shape(state, "output_blocks.0.lin_up.weight", where)
    targets, _ = _shape(state, "output_blocks.0.lin.weight", where)
    if targets != 1:
        raise CheckpointError(f"{where}: output_blocks.*.lin predicts {targets} targets; only energy (1) is supported")
    if sbf_in % num_radial:
        raise CheckpointError(f"{where}: interaction_blocks.0.lin_sbf1.weight has {sbf_in} inputs, not a multiple "
                              f"of num_radial={num_radial} (rbf.freq)")
    return dict(hidden_channels=hidden, out_emb_channels=out_emb, int_emb_size=int_emb, basis_emb_size=basis_emb,
                num_blocks=_count(state, r"interaction_blocks\.(\d+)\."), num_spherical=sbf_in // num_radial,
                num_radial=num_radial,
                num_before_skip=_count(state, r"interaction_blocks\.0\.layers_before_skip\.(\d+)\."),
                num_after_skip=_count(state, r"interaction_blocks\.0\.layers_after_skip\.(\d+)\."),
                num_output_layers=_count(state, r"output_blocks\.0\.lins\.(\d+)\."), num_elements=rows - 1,
                output_up_bias="output_blocks.0.lin_up.bias" in state)


def dimenetpp_from_state_dict(state: Dict[str, Tensor], cutoff: float, envelope_exponent: int = 5,
                              detach_angles: bool = False, where: str = "state_dict") -> DimeNetPP:
    """This project's DimeNet++ from a PyG ``DimeNetPlusPlus`` (or fairchem DimeNet++) state_dict."""
    state = _strip_prefixes(state)
    cfg = DimeNetPPConfig(**infer_dimenetpp_config(state, where), cutoff=float(cutoff),
                          envelope_exponent=int(envelope_exponent), detach_angles=detach_angles)
    model = DimeNetPP(cfg)
    radial = math.sqrt(2.0 / cutoff) / cutoff            # our radial basis = PyG's * radial
    m = _Mapper(state, where)
    m.put("rbf.freq", "rbf.freq")
    m.put("embedding.emb.weight", "emb.emb.weight", lambda w: w[1:])
    m.put("embedding.lin_rbf.weight", "emb.lin_rbf.weight", lambda w: w / radial)
    for name in ("embedding.lin_rbf.bias", "embedding.lin.weight", "embedding.lin.bias"):
        m.put(name, "emb." + name.split(".", 1)[1])
    sign = torch.tensor([(-1.0) ** l for l in range(cfg.num_spherical)]).repeat_interleave(cfg.num_radial)
    for i in range(cfg.num_blocks):
        ours, theirs = f"interactions.{i}.", f"interaction_blocks.{i}."
        m.put(ours + "lin_rbf1.weight", theirs + "lin_rbf1.weight", lambda w: w / radial)
        m.put(ours + "lin_sbf1.weight", theirs + "lin_sbf1.weight", lambda w: w * sign.to(w.dtype))
        for name in ("lin_rbf2.weight", "lin_sbf2.weight", "lin_kj.weight", "lin_kj.bias", "lin_ji.weight",
                     "lin_ji.bias", "lin_down.weight", "lin_up.weight", "lin.weight", "lin.bias"):
            m.put(ours + name, theirs + name)
        for part, count in (("before_skip", cfg.num_before_skip), ("after_skip", cfg.num_after_skip)):
            for k in range(count):
                for name in ("lin1.weight", "lin1.bias", "lin2.weight", "lin2.bias"):
                    m.put(f"{ours}{part}.{k}.{name}", f"{theirs}layers_{part}.{k}.{name}")
    for i in range(cfg.num_blocks + 1):
        ours, theirs = f"outputs.{i}.", f"output_blocks.{i}."
        m.put(ours + "lin_rbf.weight", theirs + "lin_rbf.weight", lambda w: w / radial)
        names = ["lin_up.weight", "lin.weight"] + (["lin_up.bias"] if cfg.output_up_bias else [])
        names += [f"lins.{k}.{p}" for k in range(cfg.num_output_layers) for p in ("weight", "bias")]
        for name in names:
            m.put(ours + name, theirs + name)
    return m.load_into(model)


# --------------------------------------------------------------------------------------------------
# GemNet-T / GemNet-dT (fairchem)
# --------------------------------------------------------------------------------------------------
def infer_gemnet_config(state: Dict[str, Tensor], where: str) -> Dict[str, Any]:
    emb_rbf, num_radial = _shape(state, "mlp_rbf3.linear.weight", where)
    num_spherical, _, emb_cbf = _shape(state, "mlp_cbf3.weight", where)
    rows, emb_atom = _shape(state, "atom_emb.embeddings.weight", where)
    emb_edge, _ = _shape(state, "edge_emb.dense.linear.weight", where)
    emb_trip, _, emb_bil = _shape(state, "int_blocks.0.trip_interaction.mlp_cbf.weight", where)
    residual_layers = _count(state, r"int_blocks\.0\.layers_after_skip\.0\.dense_mlp\.(\d+)\.")
    if residual_layers != 2:
        raise CheckpointError(f"{where}: residual layers have {residual_layers} dense layers; only 2 are supported")
    direct = "out_blocks.0.out_forces.linear.weight" in state
    return dict(num_spherical=num_spherical, num_radial=num_radial,
                num_blocks=_count(state, r"int_blocks\.(\d+)\."), emb_size_atom=emb_atom, emb_size_edge=emb_edge,
                emb_size_trip=emb_trip, emb_size_rbf=emb_rbf, emb_size_cbf=emb_cbf, emb_size_bil_trip=emb_bil,
                num_before_skip=_count(state, r"int_blocks\.0\.layers_before_skip\.(\d+)\."),
                num_after_skip=_count(state, r"int_blocks\.0\.layers_after_skip\.(\d+)\."),
                num_concat=_count(state, r"int_blocks\.0\.residual_m\.(\d+)\."),
                num_atom=_count(state, r"out_blocks\.0\.layers\.(\d+)\.") - 1, direct_forces=direct,
                num_elements=rows, force_mlp_dense=direct, symmetric_edges="one_sided")


def gemnet_from_fairchem(state: Dict[str, Tensor], cutoff: float = 6.0, envelope_exponent: int = 5,
                         where: str = "state_dict") -> GemNetT:
    """This project's GemNet-T/dT from a fairchem ``GemNetT`` state_dict (direct forces if it has a force head)."""
    state = _strip_prefixes(state)
    cfg = GemNetConfig(**infer_gemnet_config(state, where), cutoff=float(cutoff),
                       envelope_exponent=int(envelope_exponent), weight_init="torch")
    model = GemNetT(cfg)
    m = _Mapper(state, where)

    def gaussian_centres(key):
        value = m.take(key)
        if value is not None and not torch.allclose(value.double().flatten(),
                                                    torch.linspace(0, 1, cfg.num_radial, dtype=torch.float64),
                                                    atol=1e-6):
            raise CheckpointError(f"{where}: {key} are not Gaussians evenly spaced on [0, 1]; only fairchem's "
                                  "'gaussian' radial basis (start 0, stop 1) is supported")

    def scale(ours, theirs):        # fairchem: 0 = not fitted = no scaling
        m.put(ours, theirs, lambda s: torch.where(s == 0, torch.ones_like(s), s).reshape(()))

    def residuals(ours, theirs, count):
        for k in range(count):
            for layer in range(2):
                m.put(f"{ours}.{k}.mlp.{layer}.linear.weight", f"{theirs}.{k}.dense_mlp.{layer}.linear.weight")

    def atom_mlp(ours, theirs, first_dense=True, offset=0):
        if first_dense:
            m.put(f"{ours}.0.linear.weight", f"{theirs}.0.linear.weight")
        for k in range(cfg.num_atom):
            for layer in range(2):
                m.put(f"{ours}.{k + offset}.mlp.{layer}.linear.weight",
                      f"{theirs}.{k + 1}.dense_mlp.{layer}.linear.weight")

    gaussian_centres("radial_basis.rbf.offset")
    gaussian_centres("cbf_basis3.radial_basis.rbf.offset")
    for name in ("mlp_rbf3", "mlp_rbf_h", "mlp_rbf_out"):
        m.put(f"{name}.linear.weight", f"{name}.linear.weight")
    m.put("mlp_cbf3", "mlp_cbf3.weight")
    m.put("atom_emb.weight", "atom_emb.embeddings.weight")
    m.put("edge_emb.dense.linear.weight", "edge_emb.dense.linear.weight")
    for i in range(cfg.num_blocks):
        ours, theirs = f"interactions.{i}", f"int_blocks.{i}"
        m.put(f"{ours}.dense_ca.linear.weight", f"{theirs}.dense_ca.linear.weight")
        t_ours, t_theirs = f"{ours}.triplet", f"{theirs}.trip_interaction"
        for name in ("dense_ba", "mlp_rbf", "down_projection", "up_projection_ca", "up_projection_ac"):
            m.put(f"{t_ours}.{name}.linear.weight", f"{t_theirs}.{name}.linear.weight")
        m.put(f"{t_ours}.bilinear.weight", f"{t_theirs}.mlp_cbf.weight", lambda w: w.permute(1, 0, 2).contiguous())
        scale(f"{t_ours}.scale_rbf.scale", f"{t_theirs}.scale_rbf.scale_factor")
        scale(f"{t_ours}.scale_cbf_sum.scale", f"{t_theirs}.scale_cbf_sum.scale_factor")
        residuals(f"{ours}.before_skip", f"{theirs}.layers_before_skip", cfg.num_before_skip)
        residuals(f"{ours}.after_skip", f"{theirs}.layers_after_skip", cfg.num_after_skip)
        m.put(f"{ours}.atom_update.dense_rbf.linear.weight", f"{theirs}.atom_update.dense_rbf.linear.weight")
        scale(f"{ours}.atom_update.scale_sum.scale", f"{theirs}.atom_update.scale_sum.scale_factor")
        atom_mlp(f"{ours}.atom_update.layers", f"{theirs}.atom_update.layers", offset=1)
        m.put(f"{ours}.concat.dense.linear.weight", f"{theirs}.concat_layer.dense.linear.weight")
        residuals(f"{ours}.residual_m", f"{theirs}.residual_m", cfg.num_concat)
    for i in range(cfg.num_blocks + 1):
        ours, theirs = f"outputs.{i}", f"out_blocks.{i}"
        m.put(f"{ours}.dense_rbf.linear.weight", f"{theirs}.dense_rbf.linear.weight")
        scale(f"{ours}.scale_sum.scale", f"{theirs}.scale_sum.scale_factor")
        atom_mlp(f"{ours}.layers", f"{theirs}.layers", offset=1)
        for key in [k for k in state if k.startswith(f"{theirs}.seq_energy.")]:   # alias of .layers in fairchem
            alias = f"{theirs}.layers." + key[len(f"{theirs}.seq_energy."):]
            if alias not in state or not torch.equal(state[key], state[alias]):
                raise CheckpointError(f"{where}: {key} differs from {alias} (fairchem shares these modules)")
            m.ignore(key)
        m.put(f"{ours}.out_energy.weight", f"{theirs}.out_energy.linear.weight")
        if cfg.direct_forces:
            atom_mlp(f"{ours}.seq_forces", f"{theirs}.seq_forces", offset=1)
            m.put(f"{ours}.dense_rbf_f.linear.weight", f"{theirs}.dense_rbf_F.linear.weight")
            scale(f"{ours}.scale_rbf_f.scale", f"{theirs}.scale_rbf_F.scale_factor")
            # fairchem sums F_st * (unit vector source -> target); ours uses target -> source
            m.put(f"{ours}.out_forces.weight", f"{theirs}.out_forces.linear.weight", lambda w: -w)
    return m.load_into(model)


# --------------------------------------------------------------------------------------------------
# fairchem checkpoints: model config, normalizers
# --------------------------------------------------------------------------------------------------
FAIRCHEM_NAMES = {"dimenetplusplus": "dimenetpp", "dimenetplusplus_backbone": "dimenetpp",
                  "gemnet_t": "gemnet_t", "gemnet_t_backbone": "gemnet_t"}


@dataclass
class Converted:
    name: str                       # dimenetpp | gemnet_t | gemnet_dt
    model: nn.Module
    normalizer: Dict[str, float]
    cutoff: float
    max_neighbors: int
    notes: List[str] = field(default_factory=list)


def _fairchem_model_config(ckpt: Dict[str, Any]) -> Tuple[Optional[str], Dict[str, Any]]:
    config = ckpt.get("config") or {}
    model = config.get("model")
    if isinstance(model, dict):
        attrs = {k: v for k, v in model.items() if k != "name"}
        name = model.get("name")
        if name == "hydra" and isinstance(model.get("backbone"), dict):
            attrs = dict(model["backbone"])
            name = attrs.pop("model", None)
        return name, attrs
    return model, dict(config.get("model_attributes") or {})


def _refuse_unsupported(name: str, attrs: Dict[str, Any], where: str) -> None:
    checks = [("activation", str(attrs.get("activation", "swish")).lower() in ("swish", "silu")),
              ("extensive", attrs.get("extensive", True) is True),
              ("rbf", (attrs.get("rbf") or {"name": "gaussian"}).get("name", "").lower() == "gaussian"),
              ("cbf", (attrs.get("cbf") or {"name": "spherical_harmonics"}).get("name", "").lower()
               == "spherical_harmonics"),
              ("envelope", (attrs.get("envelope") or {"name": "polynomial"}).get("name", "").lower() == "polynomial")]
    if name == "dimenetpp":
        checks = [("act", str(attrs.get("act", "silu")).lower() in ("swish", "silu"))]
    bad = [f"{key}={attrs.get(key)!r}" for key, ok in checks if not ok]
    if bad:
        raise ConfigError(f"{where}: model options {', '.join(bad)} are not supported by this project's {name}")


def _fairchem_normalizer(ckpt: Dict[str, Any], where: str) -> Tuple[Optional[Dict[str, float]], Optional[float]]:
    """(energy {"mean", "std"}, force std) from fairchem's saved normalizers or its dataset config."""
    def value(x):
        return float(x.item() if torch.is_tensor(x) else x)

    norms = ckpt.get("normalizers") or {}
    energy = norms.get("target") or norms.get("energy")
    forces = norms.get("grad_target") or norms.get("forces")
    if energy:
        e = {"mean": value(energy["mean"]), "std": value(energy.get("std", energy.get("rmsd")))}
        f = value(forces.get("std", forces.get("rmsd"))) if forces else None
        return e, f
    dataset = (ckpt.get("config") or {}).get("dataset") or {}
    dataset = dataset.get("train", dataset) if isinstance(dataset, dict) else dataset
    if isinstance(dataset, list):
        dataset = dataset[0] if dataset else {}
    if isinstance(dataset, dict) and dataset.get("normalize_labels") and "target_mean" in dataset:
        return ({"mean": float(dataset["target_mean"]), "std": float(dataset["target_std"])},
                float(dataset["grad_target_std"]) if "grad_target_std" in dataset else None)
    return None, None


def convert_fairchem(ckpt: Dict[str, Any], model_name: Optional[str] = None, cutoff: Optional[float] = None,
                     max_neighbors: Optional[int] = None, envelope_exponent: Optional[int] = None,
                     normalizer: Optional[Dict[str, float]] = None, use_ema: bool = False,
                     full_angle_gradients: bool = False, where: str = "checkpoint") -> Converted:
    """Convert a fairchem checkpoint dict (or a bare state_dict) of DimeNet++, GemNet-T or GemNet-dT."""
    notes: List[str] = []
    if "state_dict" in ckpt:
        state = ckpt["state_dict"]
    elif all(torch.is_tensor(v) for v in ckpt.values()):
        state = ckpt
    else:
        raise CheckpointError(f"{where} has no 'state_dict' and is not a state_dict itself")
    if use_ema:
        state = _ema_state(ckpt, state, where)
        notes.append("weights from the checkpoint's EMA")
    state = _strip_prefixes(state)
    fc_name, attrs = _fairchem_model_config(ckpt)
    inferred = "dimenetpp" if "interaction_blocks.0.lin_down.weight" in state else (
        "gemnet_t" if "int_blocks.0.trip_interaction.mlp_cbf.weight" in state else None)
    if inferred is None:
        raise CheckpointError(f"{where}: neither a DimeNet++ (interaction_blocks.*.lin_down) nor a GemNet-T "
                              f"(int_blocks.*.trip_interaction) state_dict; first keys {sorted(state)[:5]}")
    if fc_name is not None and FAIRCHEM_NAMES.get(fc_name) not in (None, inferred):
        raise CheckpointError(f"{where}: config names model {fc_name!r} but the weights are a {inferred}")
    if fc_name is not None and fc_name not in FAIRCHEM_NAMES:
        raise ConfigError(f"{where}: fairchem model {fc_name!r} is not supported (supported: {sorted(FAIRCHEM_NAMES)})")
    if inferred == "gemnet_t" and "out_blocks.0.out_forces.linear.weight" in state:
        inferred = "gemnet_dt"
    if model_name is not None and model_name != inferred:
        raise ConfigError(f"--model {model_name} given, but {where} holds a {inferred}")
    _refuse_unsupported(inferred, attrs, where)
    if cutoff is None:
        cutoff = float(attrs.get("cutoff", 10.0 if inferred == "dimenetpp" else 6.0))
    if max_neighbors is None:
        max_neighbors = int(attrs.get("max_neighbors", 50))
    if envelope_exponent is None:
        envelope_exponent = int(attrs.get("envelope_exponent", (attrs.get("envelope") or {}).get("exponent", 5)))
    if inferred == "dimenetpp":
        model = dimenetpp_from_state_dict(state, cutoff, envelope_exponent, detach_angles=not full_angle_gradients,
                                          where=where)
        if not full_angle_gradients:
            notes.append("detach_angles=True: forces reproduce fairchem's, which lack the angular term")
    else:
        if "num_elements" in attrs and int(attrs["num_elements"]) != state["atom_emb.embeddings.weight"].shape[0]:
            raise CheckpointError(f"{where}: config num_elements={attrs['num_elements']} but atom_emb.embeddings "
                                  f"has {state['atom_emb.embeddings.weight'].shape[0]} rows")
        model = gemnet_from_fairchem(state, cutoff, envelope_exponent, where=where)
    energy, force_std = _fairchem_normalizer(ckpt, where)
    if normalizer is not None:
        energy = normalizer
    elif energy is None:
        energy = {"mean": 0.0, "std": 1.0}
        notes.append("no normalizer in the checkpoint: energies are the raw model output (mean 0, std 1)")
    if force_std is not None and normalizer is None and not math.isclose(force_std, energy["std"], rel_tol=1e-6):
        if inferred != "gemnet_dt":
            raise ConfigError(f"{where}: force std {force_std} differs from energy std {energy['std']}; a "
                              f"conservative {inferred} here uses one std for both (pass --energy_mean/--energy_std "
                              "to override)")
        with torch.no_grad():
            for out in model.outputs:
                out.out_forces.weight.mul_(force_std / energy["std"])
        notes.append(f"direct-force head rescaled by force std / energy std = {force_std / energy['std']:.6g}")
    return Converted(inferred, model, {"mean": float(energy["mean"]), "std": float(energy["std"])}, float(cutoff),
                     int(max_neighbors), notes)


def _ema_state(ckpt: Dict[str, Any], state: Dict[str, Tensor], where: str) -> Dict[str, Tensor]:
    """fairchem's EMA shadow parameters (in the order of the trainable parameters) put into the state_dict."""
    ema = ckpt.get("ema")
    if not ema or "shadow_params" not in ema:
        raise CheckpointError(f"{where} holds no EMA weights ('ema' with 'shadow_params'); drop --use_ema")
    trainable = [k for k, v in state.items() if v.is_floating_point() and not k.endswith("scale_factor")
                 and not k.endswith(".offset") and ".seq_energy." not in k]
    shadow = ema["shadow_params"]
    if len(shadow) != len(trainable):
        raise CheckpointError(f"{where}: EMA has {len(shadow)} tensors but the state_dict {len(trainable)} trainable "
                              "parameters; cannot pair them")
    out = dict(state)
    for key, value in zip(trainable, shadow):
        if value.shape != state[key].shape:
            raise CheckpointError(f"{where}: EMA tensor for {key} has shape {tuple(value.shape)}, "
                                  f"expected {tuple(state[key].shape)}")
        out[key] = value
    for key in [k for k in out if ".seq_energy." in k]:           # fairchem aliases of .layers
        out[key] = out.get(key.replace(".seq_energy.", ".layers."), out[key])
    return out


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("input", help="PyG state_dict (.pt) or fairchem checkpoint (.pt)")
    parser.add_argument("--from", dest="source", choices=("pyg", "fairchem"), required=True, help="where it comes from")
    parser.add_argument("--model", choices=("dimenetpp", "gemnet_t", "gemnet_dt"), default=None,
                        help="expected model (pyg: dimenetpp; fairchem: inferred from the weights if omitted)")
    parser.add_argument("--output", required=True, help="this project's checkpoint to write")
    parser.add_argument("--cutoff", type=float, default=None,
                        help="radius cutoff in Angstrom (pyg: 5.0, PyG's default; fairchem: its config, else "
                             "fairchem's default, 6.0 GemNet / 10.0 DimeNet++)")
    parser.add_argument("--max_neighbors", type=int, default=None,
                        help="neighbours kept per atom (default: pyg 32, fairchem its config or 50)")
    parser.add_argument("--envelope_exponent", type=int, default=None, help="envelope exponent (default: 5 / config)")
    parser.add_argument("--energy_mean", type=float, default=None, help="energy normaliser mean (eV)")
    parser.add_argument("--energy_std", type=float, default=None, help="energy normaliser std (eV); forces use it too")
    parser.add_argument("--use_ema", action="store_true", help="fairchem: take the checkpoint's EMA weights")
    parser.add_argument("--full_angle_gradients", action="store_true",
                        help="fairchem DimeNet++: keep the angle in -dE/dpos (fairchem detaches it)")
    parser.add_argument("--allow_pickle", action="store_true",
                        help="load a foreign file that pickles objects (runs its pickle: trusted files only)")
    return parser


def main(argv=None) -> Converted:
    args = build_parser().parse_args(argv)
    if (args.energy_mean is None) != (args.energy_std is None):
        raise ConfigError("give both --energy_mean and --energy_std, or neither")
    if args.energy_std is not None and args.energy_std <= 0:
        raise ConfigError(f"--energy_std must be > 0, got {args.energy_std}")
    normalizer = None if args.energy_mean is None else {"mean": args.energy_mean, "std": args.energy_std}
    obj = load_foreign(args.input, args.allow_pickle)
    where = str(args.input)
    if args.source == "pyg":
        if args.model not in (None, "dimenetpp"):
            raise ConfigError("--from pyg converts DimeNetPlusPlus only (--model dimenetpp)")
        if args.use_ema or args.full_angle_gradients:
            raise ConfigError("--use_ema and --full_angle_gradients apply to --from fairchem only")
        state = obj.get("state_dict", obj) if isinstance(obj.get("state_dict"), dict) else obj
        cutoff = 5.0 if args.cutoff is None else args.cutoff
        envelope = 5 if args.envelope_exponent is None else args.envelope_exponent
        model = dimenetpp_from_state_dict(state, cutoff, envelope, where=where)
        converted = Converted("dimenetpp", model, normalizer or {"mean": 0.0, "std": 1.0}, cutoff,
                              32 if args.max_neighbors is None else args.max_neighbors)
        source = "converted from PyG DimeNetPlusPlus"
    else:
        converted = convert_fairchem(obj, args.model, args.cutoff, args.max_neighbors, args.envelope_exponent,
                                     normalizer, args.use_ema, args.full_angle_gradients, where)
        source = f"converted from fairchem {converted.name}"
    if converted.cutoff <= 0 or converted.max_neighbors < 1:
        raise ConfigError(f"cutoff must be > 0 and max_neighbors >= 1, got {converted.cutoff} and "
                          f"{converted.max_neighbors}")
    source += f" {Path(args.input).name} (sha256 {sha256_of(args.input)[:16]})"
    write_model_checkpoint(args.output, converted.model, converted.name, converted.normalizer, converted.cutoff,
                           converted.max_neighbors, preset=None, source=source)
    cfg = converted.model.config_dict()
    print(f"wrote {args.output}: {converted.name}, {sum(p.numel() for p in converted.model.parameters()):,} "
          f"parameters, cutoff {converted.cutoff}, max_neighbors {converted.max_neighbors}, "
          f"normalizer {converted.normalizer}; config {cfg}")
    for note in converted.notes:
        print("note: " + note)
    return converted


if __name__ == "__main__":
    raise SystemExit(run_main(main))
