"""One vocabulary for every recipe: flag spellings, entry points and metric names with their units.

The logger (:mod:`runtime.logging`) checks every metric a recipe logs against :func:`metric_spec`
and writes its DLLogger METADATA record (unit and format) the first time the metric appears, as
NVIDIA's DLLogger does. A test reads the logs of a tiny run of each recipe and checks every name.

Flags (concept -> spelling, the same in every recipe; NVIDIA's spellings in brackets are aliases):

====================  ===========================================================================
wall-time limit       ``--max_minutes``
step limit            ``--max_steps`` [``--steps``] (optimizer steps, in total across resumes)
size preset           ``--preset`` [MoFlow: ``--config_name``]
data source           ``--dataset``
log cadence           ``--log_interval`` (optimizer steps)
evaluation cadence    ``--eval_interval`` [``--eval_epochs``] (epochs)
checkpoint cadence    ``--ckpt_interval`` [``--save_epochs``] (epochs), ``--ckpt_steps`` (steps)
results directory     ``--log_dir`` [``--results_dir``]
checkpoints           ``--save_ckpt_path``, ``--load_ckpt_path``, ``--finetune``
gradient clipping     ``--gradient_clip`` [``--clip``]
CUDA graphs           ``--cuda_graphs`` [``--cuda_graph``]
distributed timeout   ``--dist_timeout`` (minutes)
====================  ===========================================================================

Entry points: ``python -m PKG.train``, ``python -m PKG.evaluate`` (metrics on a split, from a
checkpoint that carries its own config) and ``python -m PKG.predict`` (outputs to a file).

Metric names (snake_case):

- ``{split}_loss`` and ``{split}_{metric}`` with split in ``train``, ``val``, ``test`` and metric
  from :data:`RECIPE_METRICS`; a bare ``{metric}`` is a property of generated samples or
  predictions that no split defines (MoFlow's validity, uniqueness, novelty, ...);
- ``{split}_{metric}_baseline_{name}``: a trivial predictor's score (``mean``: the training mean;
  ``linref``: per-element linear reference energies; ``zero``: zero forces);
- ``{phase}_throughput`` (molecules/s, or structures/s for graph_parallel) and
  ``{phase}_latency_{mean,p50,p90,p95,p99}`` (ms) with phase ``train`` or ``inference``;
- the shared names in :data:`COMMON`.
"""
from __future__ import annotations

import re
from typing import Dict, Optional, Tuple

Spec = Tuple[Optional[str], Optional[str]]  # (unit, format)

RECIPES = ("moflow", "se3_transformer", "graph_parallel")
SPLITS = ("train", "val", "test")
PHASES = ("train", "inference")
BASELINES = ("mean", "linref", "zero")
ITEMS = {"moflow": "molecules", "se3_transformer": "molecules", "graph_parallel": "structures"}

# Per recipe: metric -> (unit, format). ``None`` unit: dimensionless, or set by the recipe at run time
# (SE(3)'s ``mae`` is in the unit of the QM9 target it regresses).
RECIPE_METRICS: Dict[str, Dict[str, Spec]] = {
    "moflow": {
        "loss": ("bits/dim", ":.4f"), "nll_x": ("bits/dim", ":.4f"), "nll_adj": ("bits/dim", ":.4f"),
        "validity": ("%", ":.2f"), "validity_without_correction": ("%", ":.2f"), "uniqueness": ("%", ":.2f"),
        "novelty": ("%", ":.2f"), "nuv": ("%", ":.2f"), "reconstruction": ("%", ":.2f"),
    },
    "se3_transformer": {
        "loss": ("standardised L1", ":.4f"), "mae": (None, ":.4f"),
    },
    "graph_parallel": {
        "loss": ("normalised", ":.4f"), "energy_mae": ("eV", ":.4f"), "forces_mae": ("eV/A", ":.4f"),
        "forces_cos": (None, ":.4f"), "efwt": ("%", ":.2f"),
    },
}

COMMON: Dict[str, Spec] = {
    "lr": (None, ":.3e"), "grad_norm": (None, ":.4f"), "prior_ln_var": (None, ":.4f"),
    "epochs": (None, ":d"), "steps": (None, ":d"), "minutes": ("min", ":.2f"), "stop_reason": (None, None),
    "peak_memory_mb": ("MB", ":.1f"), "parameters": (None, ":d"), "world_size": (None, ":d"),
    "gp_size": (None, ":d"), "dp_size": (None, ":d"), "temperature": (None, ":.2f"), "num_samples": (None, ":d"),
    "checkpoint": (None, None), "resumed_from": (None, None), "task": (None, None),
}
_STATS = ("mean", "p50", "p90", "p95", "p99")


def metric_spec(recipe: str, name: str) -> Spec:
    """(unit, format) of metric ``name`` in ``recipe``; KeyError for a name outside the vocabulary."""
    if recipe not in RECIPE_METRICS:
        raise KeyError(f"unknown recipe {recipe!r}; choose from {RECIPES}")
    if name in COMMON:
        return COMMON[name]
    if name in RECIPE_METRICS[recipe]:  # a metric of generated samples or predictions: no split
        return RECIPE_METRICS[recipe][name]
    items = ITEMS[recipe]
    metrics = RECIPE_METRICS[recipe]
    split = "|".join(SPLITS)
    match = re.fullmatch(rf"({split})_size", name)
    if match:
        return items, ":d"
    match = re.fullmatch(rf"({'|'.join(PHASES)})_(throughput|steps|latency_({'|'.join(_STATS)}))", name)
    if match:
        kind = match.group(2)
        if kind == "throughput":
            return f"{items}/s", ":.2f"
        return (None, ":d") if kind == "steps" else ("ms", ":.3f")
    match = re.fullmatch(rf"({split})_([a-z0-9_]+?)(_baseline_({'|'.join(BASELINES)}))?", name)
    if match and match.group(2) in metrics:
        return metrics[match.group(2)]
    raise KeyError(f"metric {name!r} is not in the {recipe} vocabulary (runtime/vocabulary.py)")


def is_known(recipe: str, name: str) -> bool:
    try:
        metric_spec(recipe, name)
    except KeyError:
        return False
    return True
