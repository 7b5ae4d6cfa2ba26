"""A fairchem (1.x) training YAML as graph_parallel.train flags: ``--fairchem_config FILE``.

    python -m graph_parallel.train --fairchem_config configs/s2ef/2M/gemnet/gemnet-dT.yml --dataset data/s2ef

:func:`fairchem_defaults` reads the file (and its ``includes:``, as fairchem merges them: later
files and the including file win) and returns the flag values it sets. The caller installs them
as the parser's defaults, so **a flag given on the command line wins over the file**. Every field
is either

- mapped to a flag (:data:`MODEL_FLAGS`, :data:`OPTIM_FLAGS`, model sizes to the architecture);
- accepted because this project always does what it asks (:data:`SAME`: the value must be the one
  listed, e.g. ``loss_force: l2mae``), or because it does the equivalent itself (:data:`IGNORED`,
  with the reason, printed);
- or refused: one :class:`~runtime.errors.ConfigError` names every such field and why.

fairchem's ``dataset`` holds one ``src`` per split; here ``--dataset`` is one directory holding
the splits, so ``dataset.train.src`` and ``dataset.val.src`` must be ``DIR/train[.lmdb]`` and
``DIR/val[.lmdb]`` (then ``--dataset DIR``), or ``--dataset`` is given on the command line.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Tuple

from runtime.errors import ConfigError, MissingFileError
from runtime.optim import OPTIMIZERS

from graph_parallel.convert import FAIRCHEM_NAMES

# model field -> train flag
MODEL_FLAGS = {"cutoff": "cutoff", "max_neighbors": "max_neighbors", "scale_file": "scale_file"}
# model fields that size the architecture (same names here), per model
ARCHITECTURE = {
    "dimenetpp": ("hidden_channels", "out_emb_channels", "int_emb_size", "basis_emb_size", "num_blocks",
                  "num_spherical", "num_radial", "num_before_skip", "num_after_skip", "num_output_layers",
                  "envelope_exponent"),
    "gemnet_t": ("num_spherical", "num_radial", "num_blocks", "emb_size_atom", "emb_size_edge", "emb_size_trip",
                 "emb_size_rbf", "emb_size_cbf", "emb_size_bil_trip", "num_before_skip", "num_after_skip",
                 "num_concat", "num_atom", "num_elements", "envelope_exponent"),
}
# optim field -> (train flag, conversion)
OPTIM_FLAGS = {"batch_size": ("batch_size", int), "num_workers": ("num_workers", int),
               "lr_initial": ("learning_rate", float), "weight_decay": ("weight_decay", float),
               "max_epochs": ("epochs", int), "max_steps": ("max_steps", int),
               "energy_coefficient": ("energy_coef", float), "force_coefficient": ("force_coef", float),
               "ema_decay": ("ema_decay", float), "clip_grad_norm": ("gradient_clip", float),
               "warmup_steps": ("warmup_steps", int), "factor": ("lr_factor", float),
               "patience": ("lr_patience", int), "lr_gamma": ("lr_gamma", float)}
# fields accepted when they hold what this project always does
SAME = {"trainer": ("forces", "ocp"), "model.regress_forces": (True,), "model.use_pbc": (True,),
        "model.extensive": (True,), "model.activation": ("silu", "swish"), "model.act": ("silu", "swish"),
        "model.rbf.name": ("gaussian",), "model.cbf.name": ("spherical_harmonics",),
        "model.envelope.name": ("polynomial",), "model.output_init": ("HeOrthogonal",),
        "optim.loss_energy": ("mae",), "optim.loss_force": ("l2mae",), "optim.mode": ("min",),
        "optim.scheduler": ("ReduceLROnPlateau",), "task.dataset": ("trajectory_lmdb", "lmdb", "ase_db", "ase_lmdb"),
        "dataset.train.normalize_labels": (True,)}
IGNORED = {
    "model.otf_graph": "graphs are always built from the structures here",
    "optim.eval_batch_size": "evaluation uses --batch_size",
    "dataset.train.target_mean": "the energy normaliser is fitted on the training split here",
    "dataset.train.target_std": "the energy normaliser is fitted on the training split here",
    "dataset.train.grad_target_mean": "forces share the energy normaliser's std here",
    "dataset.train.grad_target_std": "forces share the energy normaliser's std here",
    "task.primary_metric": "evaluation reports every metric",
    "task.description": "free text", "task.type": "S2EF is the task here", "task.metric": "every metric is reported",
    "task.labels": "free text", "task.grad_input": "free text", "task.train_on_free_atoms": "losses use free atoms",
    "task.eval_on_free_atoms": "metrics use free atoms", "logger.project": "see --wandb_project",
}
LOGGERS = ("tensorboard", "wandb")       # logger (or logger.name) -> that flag
REFUSED_BECAUSE = {
    "optim.eval_every": "evaluation runs every --eval_interval epochs here (fairchem counts steps)",
    "optim.lr_milestones": "the step schedule decays every --lr_step_size steps after warm-up (--scheduler step)",
    "optim.warmup_factor": "warm-up rises linearly from 1/--warmup_steps here",
    "optim.optimizer_params.amsgrad": "AMSGrad is not offered",
}


def _flatten(tree: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _merge(base: Dict[str, Any], top: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_yaml(path: str, seen: Tuple[str, ...] = ()) -> Dict[str, Any]:
    """The file's mapping with its ``includes`` merged in (relative to the working directory, as
    fairchem resolves them, else to the file's directory)."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise MissingFileError(f"--fairchem_config {path}: no such file")
    if str(file.resolve()) in seen:
        raise ConfigError(f"--fairchem_config {path}: includes itself (through {' -> '.join(seen)})")
    try:
        tree = yaml.safe_load(file.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"--fairchem_config {path}: not valid YAML ({' '.join(str(err).split())})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"--fairchem_config {path}: a fairchem config is a mapping (trainer, dataset, model, optim)")
    merged: Dict[str, Any] = {}
    for include in tree.pop("includes", None) or []:
        target = Path(include) if Path(include).is_file() else file.parent / include
        merged = _merge(merged, read_yaml(str(target), seen + (str(file.resolve()),)))
    return _merge(merged, tree)


def _dataset_dir(fields: Dict[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
    """``--dataset`` from ``dataset.train.src`` / ``dataset.val.src`` (fairchem's dict or list form)."""
    dataset = fields.pop("dataset", None)
    srcs = {}
    if isinstance(dataset, list):                       # older configs: [train, val, test]
        srcs = {s: d.get("src") for s, d in zip(("train", "val", "test"), dataset) if isinstance(d, dict)}
        for split, d in zip(("train", "val", "test"), dataset):
            fields.update({f"dataset.{split}.{k}": v for k, v in (d or {}).items() if k != "src"})
    for key in [k for k in fields if k.startswith("dataset.") and k.endswith(".src")]:
        srcs[key.split(".")[1]] = fields.pop(key)
    if not srcs:
        return {}, []
    parents = {split: os.path.dirname(os.path.normpath(str(src))) for split, src in srcs.items() if src}
    names_ok = all(Path(str(src)).name.split(".")[0] == split for split, src in srcs.items() if src)
    if names_ok and len(set(parents.values())) == 1:
        return {"dataset": next(iter(parents.values())) or "."}, []
    listed = ", ".join(f"{split}: {src}" for split, src in srcs.items())
    return {}, [f"dataset.*.src ({listed}): --dataset is one directory holding the splits as train[.lmdb] and "
                f"val[.lmdb]; link them into one directory, or give --dataset DIR"]


def fairchem_defaults(path: str, dataset_given: bool = False) -> Dict[str, Any]:
    """The train flag values ``path`` sets (see the module docstring); ``model_config`` holds the
    architecture fields (overrides of ``--preset``). Refused fields raise one ConfigError naming all."""
    fields = _flatten(read_yaml(path))
    out, problems = {}, []
    dataset, why = _dataset_dir(fields)
    if not dataset_given:
        out.update(dataset)
        problems += why
    name = fields.pop("model.name", None)
    if name is not None:
        if name not in FAIRCHEM_NAMES:
            problems.append(f"model.name {name!r}: this project trains {sorted(FAIRCHEM_NAMES)}")
        elif FAIRCHEM_NAMES[name] == "dimenetpp":
            out["model"] = "dimenetpp"
        else:
            out["model"] = "gemnet_dt" if fields.pop("model.direct_forces", False) else "gemnet_t"
    architecture = ARCHITECTURE["dimenetpp" if out.get("model") == "dimenetpp" else "gemnet_t"]
    if "model.envelope.exponent" in fields:
        fields["model.envelope_exponent"] = fields.pop("model.envelope.exponent")
    # fairchem's own architecture details: DimeNet++'s output bias; GemNet's graph and dT force MLP
    config = {"dimenetpp": {"output_up_bias": True}, "gemnet_t": {"symmetric_edges": "one_sided"},
              "gemnet_dt": {"symmetric_edges": "one_sided", "force_mlp_dense": True}}.get(out.get("model"), {})
    for key, value in list(fields.items()):
        section, _, field = key.partition(".")
        if section == "model" and field in MODEL_FLAGS:
            out[MODEL_FLAGS[field]] = value
        elif section == "model" and field in architecture:
            config[field] = value
        elif section == "optim" and field in OPTIM_FLAGS:
            flag, kind = OPTIM_FLAGS[field]
            try:
                out[flag] = kind(value)
            except (TypeError, ValueError):
                problems.append(f"{key}: {value!r} is not a {kind.__name__}")
        elif key == "optim.optimizer_params.weight_decay":
            out["weight_decay"] = float(value)
        elif key == "optim.optimizer":
            out["optimizer"] = str(value).lower()
            if out["optimizer"] not in OPTIMIZERS:
                problems.append(f"{key}: {value!r} (this project offers {', '.join(OPTIMIZERS)})")
        elif key in ("logger", "logger.name") and value in LOGGERS:
            out[value] = True
        elif key in SAME:
            if value not in SAME[key]:
                problems.append(f"{key}: {value!r} (this project supports {' or '.join(map(repr, SAME[key]))})")
            if key == "optim.scheduler":
                out["scheduler"] = "plateau"
        elif key in IGNORED or section in IGNORED:
            print(f"--fairchem_config: ignoring {key} ({IGNORED.get(key) or IGNORED[section]})", flush=True)
        else:
            problems.append(f"{key}: {value!r} ({REFUSED_BECAUSE.get(key, 'no matching feature here')})")
    if config:
        out["model_config"] = config
    if problems:
        raise ConfigError(f"--fairchem_config {path}: fields with no meaning here (delete them; flags on the command "
                          "line win over the file): " + "; ".join(problems))
    return out
