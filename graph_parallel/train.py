"""Train DimeNet++ / GemNet-T / GemNet-dT on S2EF energies and forces: ``python -m graph_parallel.train --help``.

    torchrun --nproc_per_node 2 -m graph_parallel.train --model dimenetpp --preset small --gp_size 2

=================  ================================================================================
concern            rule
=================  ================================================================================
shape              the phases of :mod:`runtime.recipe` (parse -> config -> data -> model ->
                   optimizer -> resume -> loop -> finish) on a frozen :class:`TrainConfig`, where
                   the model, its architecture, cutoff and neighbours are resolved once
loop               :class:`runtime.loop.TrainLoop` drives the run (accumulation, logging, limits,
                   checkpoint cadence, exact mid-epoch resume); this file says what a step, an
                   evaluation and a checkpoint are. Batches are drawn per data-parallel rank
                   (``EpochSampler(num_replicas=dp_size, rank=dp_rank)``), so the ``--gp_size``
                   ranks of a group share every batch, partitioned for each in the collate workers.
step               the partition travels with the batch -> predict -> S2EF loss -> backward; then
                   ``sync_gradients`` (world mean), clip, optimizer step, per-step schedule (linear
                   warm-up; ``--scheduler step`` decays per step), EMA update. No host reads.
evaluation         the EMA weights on every validation structure exactly once (ShardSampler over
                   the dp group); ``val_loss``, energy/force MAE, force cosine, EFwT and the
                   baselines (training mean, per-element linear reference, zero forces).
                   ReduceLROnPlateau steps only on scheduled evaluations.
scale factors      GemNet: fitted on the first ``--fit_scale_batches`` batches of a single process's
                   epoch-0 order, on rank 0; or ``--scale_file``. A new run then broadcasts rank
                   0's whole model (initial weights and scale factors: there is no DDP to do it). They
                   are buffers: checkpoints (model and EMA) carry them, so a resume reuses them.
checkpoints        ``meta`` = recipe, model, config, dataset; ``extra`` = what
                   :mod:`graph_parallel.checkpoints` reads (normaliser, cutoff, max_neighbors,
                   preset, EMA) plus the baselines and the batch geometry. Resume refuses another
                   model, architecture or dataset (both sides named); ``--finetune`` loads only the
                   weights (any checkpoint, converted ones too) and fits the data statistics anew.
fail fast          the output directories, the data (opened, one record decoded) and the
                   checkpoint are checked before the first step; nothing is created in a data dir.
=================  ================================================================================
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from graph_parallel.checkpoints import check_buildable, checkpoint_model
from graph_parallel.data import Collater
from graph_parallel.ema import EMA
from graph_parallel.engine import DEFAULT_CUTOFF, DEFAULT_DATA_DIR, DEFAULT_MAX_NEIGHBORS, EMBEDDED, RECIPE, \
    RESULTS_DIR, add_data_args, add_grid_args, check_performance_flags, dataset_dir, dataset_name, eval_loader, \
    evaluate_split, forward, gather_peak_memory, make_grid, make_precision, open_split, world_info
from graph_parallel.losses import EnergyBaselines, Normalizer, energy_statistics, s2ef_loss
from graph_parallel.models import MODELS, count_parameters, fit_scale_factors, graph_kinds, load_scale_file, \
    model_from_config, preset_config, scale_factors_by_name
from graph_parallel.parallel import sync_gradients
from runtime.callbacks import PerformanceMeter, peak_memory_mb
from runtime.checkpoint import check_meta, check_mid_epoch_resume, config_differences, load_checkpoint, \
    read_checkpoint, save_checkpoint
from runtime.cli import ArgumentParser, add_common_args, add_refused, checkpoint_to_save, non_negative_int, \
    optimizer_betas, resolve_num_workers, sgd_momentum
from runtime.data import EpochSampler, check_batch_size, make_loader
from runtime.distributed import ProcessGrid, broadcast_module, is_main_process
from runtime.errors import CheckpointError, ConfigError, run_main
from runtime.loop import LoopConfig, Position, TrainLoop
from runtime.optim import make_optimizer, make_scheduler
from runtime.recipe import Optimization, RecipeConfig, train_main


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m graph_parallel.train", description=__doc__.split("\n\n")[0])
    add_common_args(parser, kind="train", batch_size=4, epochs=5, learning_rate=5e-4, optimizer="adamw",
                    gradient_clip=10.0, data_dir=DEFAULT_DATA_DIR, log_dir=RESULTS_DIR,
                    benchmark_warmup=3, benchmark_steps=10)
    add_data_args(parser)
    g = parser.add_argument_group("model")
    g.add_argument("--model", choices=sorted(MODELS), default=None,
                   help="network (default: dimenetpp; when resuming or fine-tuning, the checkpoint's)")
    g.add_argument("--preset", default=None, choices=sorted({p for _, presets in MODELS.values() for p in presets}),
                   help="model size preset (large: DimeNet++ only); see the README (default: base; when resuming or "
                        "fine-tuning, the checkpoint's architecture)")
    add_grid_args(g)
    g.add_argument("--fit_scale_batches", type=non_negative_int, default=4,
                   help="GemNet: batches of a single process's epoch-0 order used to fit the scaling factors "
                        "(rank 0 fits, then broadcasts; 0: keep 1.0)")
    g.add_argument("--scale_file", default=None,
                   help="GemNet: load the scaling factors from a fairchem JSON scale file instead of fitting them")
    g.add_argument("--fairchem_config", default=None, metavar="YAML",
                   help="take model, optimizer and dataset settings from a fairchem training config (flags given on "
                        "the command line win; fields with no meaning here are refused by name; see the README)")
    loss = parser.add_argument_group("loss and schedule")
    loss.add_argument("--energy_coef", type=float, default=1.0, help="weight of the energy MAE loss")
    loss.add_argument("--force_coef", type=float, default=50.0, help="weight of the force L2MAE loss (0: energy only)")
    loss.add_argument("--scheduler", choices=("plateau", "step"), default="plateau",
                      help="after warm-up: ReduceLROnPlateau on the val loss (per evaluation), or step decay")
    loss.add_argument("--warmup_steps", type=non_negative_int, default=100, help="linear learning-rate warm-up steps")
    loss.add_argument("--lr_patience", type=non_negative_int, default=3,
                      help="plateau: evaluations without improvement")
    loss.add_argument("--lr_factor", type=float, default=0.8, help="plateau: learning-rate factor")
    loss.add_argument("--lr_step_size", type=int, default=1000, help="step: decay every N optimizer steps")
    loss.add_argument("--lr_gamma", type=float, default=0.1, help="step: decay factor")
    loss.add_argument("--ema_decay", type=float, default=0.999, help="EMA of the weights for evaluation (0: off)")
    add_refused(parser, "--evaluate", "use `python -m graph_parallel.evaluate --load_ckpt_path CKPT`")
    return parser


@dataclass(frozen=True, kw_only=True)
class TrainConfig(RecipeConfig):
    model_name: str                       # dimenetpp, gemnet_t, gemnet_dt
    preset: Optional[str]                 # None: a checkpoint's architecture (fine-tuning a converted one)
    model_config: Dict[str, Any]          # the full architecture, as model.config_dict()
    cutoff: float
    max_neighbors: int
    dataset_root: Path                    # the directory --dataset names
    dataset_path: Optional[str]           # resolved, so evaluate works from any directory (None: embedded)
    scale_source: Optional[str]           # GemNet scale factors: "fitted", "file ...", the checkpoint's, or None


@dataclass
class TrainData:
    grid: ProcessGrid
    train_set: Any
    val_set: Any
    collater: Collater
    sampler: EpochSampler
    loader: Any
    val_loader: Any
    normalizer: Normalizer
    baselines: EnergyBaselines


# ---- phases (runtime.recipe) ---------------------------------------------------------------------------
def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The flags; with ``--fairchem_config`` the file's values become defaults, so command-line flags win."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.fairchem_config:
        from graph_parallel.fairchem_config import fairchem_defaults

        parser.set_defaults(**fairchem_defaults(args.fairchem_config, dataset_given=args.dataset != EMBEDDED))
        args = parser.parse_args(argv)
    check_flags(args)
    return args


def build_config(args, env) -> TrainConfig:
    """Model, architecture, cutoff and neighbours from the flags and the checkpoint (see the module
    table), the dataset's directory, the checkpoint identity."""
    state = read_checkpoint(args.load_ckpt_path) if args.load_ckpt_path else None
    name, preset, config, cutoff, max_neighbors = resolve_model(args, state)
    root = dataset_dir(args.dataset, args.data_dir)
    data_name = dataset_name(args.dataset, args.data_dir)
    if state is not None and not args.finetune:
        try:
            check_meta(args.load_ckpt_path, state["meta"], {"dataset": data_name})
        except CheckpointError as err:
            raise CheckpointError(f"{err}; to train its weights on this dataset, add --finetune") from None
    return TrainConfig(flags=args, recipe=RECIPE, run_name=f"{name}-gp{args.gp_size}",
                       save_path=checkpoint_to_save(args), checkpoint=state,
                       meta={"recipe": RECIPE, "model": name, "config": config, "dataset": data_name},
                       model_name=name, preset=preset, model_config=config, cutoff=cutoff,
                       max_neighbors=max_neighbors, dataset_root=root,
                       dataset_path=None if args.dataset == EMBEDDED else str(root.resolve()),
                       scale_source=scale_source(args, name, state))


def load_data(config: TrainConfig, env) -> TrainData:
    """The splits (opened and checked), the energy normaliser and baselines (the checkpoint's when
    resuming), and batches partitioned for this rank's graph-parallel group."""
    flags = config.flags
    grid = make_grid(flags.gp_size)
    train_set = open_split(config.dataset_root, "train")
    check_batch_size(flags.batch_size, len(train_set), grid.dp_size, "structures")
    val_set = open_split(config.dataset_root, "val", required=False)
    extra = config.checkpoint_extra
    if config.resuming:
        norm = Normalizer(**extra["normalizer"])
        baselines = EnergyBaselines.from_state(extra["baselines"]) if extra.get("baselines") else \
            energy_statistics(train_set)[1]
    else:
        norm, baselines = energy_statistics(train_set)
    edges, triplets = graph_kinds(config.model_name, config.model_config)
    collater = Collater(config.cutoff, config.max_neighbors, edges, grid.gp_rank, grid.gp_size, triplets)
    workers = resolve_num_workers(flags.num_workers, env.device)
    sampler = EpochSampler(len(train_set), shuffle=True, seed=flags.seed, num_replicas=grid.dp_size,
                           rank=grid.dp_rank)
    return TrainData(grid=grid, train_set=train_set, val_set=val_set, collater=collater, sampler=sampler,
                     loader=make_loader(train_set, flags.batch_size, sampler, collater, workers, env.device),
                     val_loader=None if val_set is None else
                     eval_loader(val_set, flags.batch_size, collater, grid, workers, env.device),
                     normalizer=norm, baselines=baselines)


def build_model(config: TrainConfig, data: TrainData, env) -> torch.nn.Module:
    """The same initial weights on every rank; a new run's GemNet scale factors (see the module table)."""
    torch.manual_seed(config.flags.seed)
    model = model_from_config(config.model_name, config.model_config).to(env.device)
    if config.checkpoint is None:
        start_new_run(model, config.model_name, config.flags, data.train_set, data.collater, env.device)
    return model


def build_optimizer(config: TrainConfig, model, env) -> Optimization:
    flags = config.flags
    optimizer = make_optimizer(flags.optimizer, model.parameters(), flags.learning_rate, flags.weight_decay,
                               momentum=sgd_momentum(flags), betas=optimizer_betas(flags))
    scheduler = make_scheduler(flags.scheduler, optimizer, warmup_steps=flags.warmup_steps,
                               step_size=flags.lr_step_size, gamma=flags.lr_gamma, patience=flags.lr_patience,
                               factor=flags.lr_factor)
    return Optimization(optimizer, scheduler, make_precision(flags, env.device))


def resume(config: TrainConfig, model, optimization: Optimization, env) -> Position:
    """Resume: model, optimizer, schedule, loss scaler, EMA and position; ``--finetune``: the weights
    only. The EMA of the weights starts here, from the weights the run starts from."""
    flags, extra = config.flags, config.checkpoint_extra
    position = Position()
    if config.resuming:
        info = load_checkpoint(flags.load_ckpt_path, model, optimization.optimizer, optimization.scheduler,
                               optimization.precision, state=config.checkpoint)
        position = Position.from_dict(info["position"])
        check_mid_epoch_resume(flags.load_ckpt_path, extra, position, flags.batch_size,
                               env.world_size // flags.gp_size)
    elif config.checkpoint is not None:
        load_checkpoint(flags.load_ckpt_path, model, state=config.checkpoint)      # --finetune: the weights only
    if flags.ema_decay > 0:
        optimization.ema = EMA(model, flags.ema_decay)
        if config.resuming and extra.get("ema"):
            optimization.ema.load_state_dict(extra["ema"], where=f"checkpoint {flags.load_ckpt_path}")
    return position


def run_loop(config: TrainConfig, env, data: TrainData, model, optimization: Optimization, position: Position,
             logger) -> dict:
    flags, device, grid = config.flags, env.device, data.grid
    optimizer, scheduler, precision, ema = (optimization.optimizer, optimization.scheduler, optimization.precision,
                                            optimization.ema)
    norm, baselines = data.normalizer, data.baselines
    n_params = count_parameters(model)
    logger.log_params({**vars(flags), "save_ckpt_path": config.save_path, "model_config": config.model_config,
                       "normalizer": norm.state_dict()})
    logger.log((), {"parameters": n_params, "train_size": len(data.train_set), "val_size": len(data.val_set or []),
                    **world_info(grid)})
    if config.checkpoint is not None:
        logger.log((), {"resumed_from": flags.load_ckpt_path})
    if is_main_process():
        print(f"{config.model_name}/{config.preset or 'checkpoint config'}: {n_params:,} parameters; {grid}; "
              f"{len(data.train_set)} train / {len(data.val_set or [])} val structures; {precision}", flush=True)
        if data.val_set is None:
            print("no val split in the dataset: training without evaluation", flush=True)
    compute_forces = flags.force_coef > 0

    def forward_backward(batch, loss_scale: float, pos: Position):
        batch = batch.to(device, non_blocking=True)
        energy, forces = forward(model, batch, grid, precision, compute_forces=compute_forces, create_graph=True)
        loss, value = s2ef_loss(energy, forces, batch, norm, flags.energy_coef, flags.force_coef, grid.dp_group)
        precision.backward(loss * loss_scale)
        return {"loss": value}

    def optimizer_step(pos: Position):
        sync_gradients(model.parameters())
        grad_norm = precision.step(optimizer, model.parameters(), clip_norm=flags.gradient_clip)
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()                              # per-step warm-up, or the step schedule
        if ema is not None:
            ema.update(model)
        return None if grad_norm is None else {"grad_norm": grad_norm}

    def evaluate(epoch: int, scheduled: bool) -> Dict[str, float]:
        if data.val_loader is None:
            return {}
        metrics = evaluate_split(ema.module if ema is not None else model, data.val_loader, grid, precision, device,
                                 norm, baselines, flags.energy_coef, flags.force_coef)
        metrics.pop("size")
        if scheduled and scheduler.plateau is not None:
            scheduler.step(metrics["loss"])
        return {f"val_{k}": v for k, v in metrics.items()}

    def save(pos: Position) -> None:
        if not config.save_path:
            return
        periodic = flags.ckpt_interval > 0 or flags.ckpt_steps > 0
        extra = {"normalizer": norm.state_dict(), "baselines": baselines.state_dict(), "cutoff": config.cutoff,
                 "max_neighbors": config.max_neighbors, "preset": config.preset,
                 "ema": ema.state_dict() if ema is not None else None, "source": "graph_parallel.train",
                 "scale_factors": config.scale_source, "energy_coef": flags.energy_coef,
                 "force_coef": flags.force_coef, "batch_size": flags.batch_size, "replicas": grid.dp_size,
                 "dp_size": grid.dp_size, "gp_size": grid.gp_size, "dataset_path": config.dataset_path}
        save_checkpoint(config.save_path, model, optimizer, scheduler, precision, meta=config.meta,
                        position=pos.to_dict(), extra=extra, keep_last=flags.keep_last if periodic else None)

    meter = PerformanceMeter(device, warmup_steps=flags.benchmark_warmup) if flags.benchmark else None
    before = peak_memory_mb(device)
    loop = TrainLoop(LoopConfig.from_args(flags, seed_rank=grid.dp_rank, replicas=grid.dp_size), data.loader,
                     data.sampler, logger, forward_backward=forward_backward, optimizer_step=optimizer_step,
                     batch_items=lambda batch: batch.num_structures, lr=lambda: optimizer.param_groups[0]["lr"],
                     evaluate=None if flags.benchmark else evaluate, save=None if flags.benchmark else save,
                     meter=meter)
    result = loop.run(position)
    if flags.benchmark:
        memory = gather_peak_memory(device, extra=before)
        peaks = [m[0] for m in memory]
        logger.log((), {"peak_memory_mb": max(peaks)})
        timing = meter.summary()
        timing["timed_steps"] = timing.pop("steps")
        summary = {**timing, **world_info(grid), "parameters": n_params, "peak_memory_mb_per_rank": peaks,
                   "memory_growth_mb_per_rank": [round(m[0] - m[1], 1) for m in memory]}
        if is_main_process():
            print("BENCHMARK " + json.dumps(summary), flush=True)
        result.update(summary)
    result["save_ckpt_path"] = config.save_path
    return result


# ---- helpers -------------------------------------------------------------------------------------------
def check_flags(args) -> None:
    check_performance_flags(args)
    if not 0.0 <= args.ema_decay < 1.0:
        raise ConfigError(f"--ema_decay must lie in [0, 1), got {args.ema_decay}")
    if args.scale_file:
        if args.model == "dimenetpp" or (args.model is None and not args.load_ckpt_path):
            raise ConfigError("--scale_file applies to GemNet (--model gemnet_t or gemnet_dt); DimeNet++ has no "
                              "scale factors")
        if args.load_ckpt_path:
            raise ConfigError("--scale_file with --load_ckpt_path: the checkpoint carries its scale factors; "
                              "drop one of them")


def resolve_model(args, state: Optional[Dict]):
    """``(name, preset, config, cutoff, max_neighbors)`` of this run. Resume: the checkpoint's model and
    architecture (flags that disagree are refused); ``--finetune``: the checkpoint's architecture
    (converted ones too); a new run: the flags, with ``--fairchem_config``'s fields."""
    path = args.load_ckpt_path
    extra = (state or {}).get("extra") or {}
    overrides = getattr(args, "model_config", None) or {}         # set by --fairchem_config
    if state is None:
        name, preset = args.model or "dimenetpp", args.preset or "base"
        cutoff = DEFAULT_CUTOFF if args.cutoff is None else args.cutoff
        return (name, preset, _preset_config(name, preset, cutoff, overrides), cutoff,
                DEFAULT_MAX_NEIGHBORS if args.max_neighbors is None else args.max_neighbors)
    recipe = (state.get("meta") or {}).get("recipe")
    if recipe not in (None, RECIPE):                   # None: written before meta carried the identity
        raise CheckpointError(f"checkpoint {path} does not match this run: recipe: checkpoint has {recipe!r}, "
                              f"this run has {RECIPE!r}")
    name, saved = checkpoint_model(path, state)
    if args.model is not None and args.model != name:
        raise CheckpointError(f"checkpoint {path} does not match this run: model: checkpoint has {name!r}, "
                              f"this run has {args.model!r}")
    cutoff = float(saved.get("cutoff", DEFAULT_CUTOFF)) if args.cutoff is None else args.cutoff
    max_neighbors = int(extra.get("max_neighbors") or DEFAULT_MAX_NEIGHBORS) if args.max_neighbors is None \
        else args.max_neighbors
    if args.finetune:                      # the architecture is the checkpoint's (converted ones too)
        differ = [f"{k}: checkpoint has {saved.get(k)!r}, --fairchem_config has {v!r}"
                  for k, v in overrides.items() if saved.get(k) != v]
        if differ:
            raise ConfigError(f"--fairchem_config disagrees with checkpoint {path}: " + "; ".join(differ)
                              + " (--finetune keeps the checkpoint's architecture)")
        if args.preset is not None:
            differ = config_differences(saved, _preset_config(name, args.preset, cutoff, {}))
            if differ:
                raise ConfigError(f"--preset {args.preset} disagrees with checkpoint {path}: " + "; ".join(differ)
                                  + " (--finetune keeps the checkpoint's architecture: drop --preset)")
        check_buildable(path, name, saved)
        return name, extra.get("preset"), saved, cutoff, max_neighbors
    preset = args.preset or extra.get("preset") or "base"
    config = _preset_config(name, preset, cutoff, overrides)
    differ = config_differences(saved, config)
    if differ:                             # resume: the same architecture
        raise CheckpointError(f"checkpoint {path} has another architecture: " + "; ".join(differ)
                              + " (pass the checkpoint's --preset and --cutoff, or --finetune)")
    return name, preset, config, cutoff, max_neighbors


def _preset_config(name: str, preset: str, cutoff: float, overrides: Dict) -> Dict:
    try:
        return preset_config(name, preset, cutoff=cutoff, **overrides)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def scale_source(args, name: str, state: Optional[Dict]) -> Optional[str]:
    """Where a run's GemNet scale factors come from: the checkpoint's record, ``--scale_file``, a fit on
    rank 0 (``"fitted"``), or None (DimeNet++, or ``--fit_scale_batches 0``)."""
    if state is not None:
        return (state.get("extra") or {}).get("scale_factors")
    if not name.startswith("gemnet"):
        return None
    if args.scale_file:
        return f"file {args.scale_file}"
    return "fitted" if args.fit_scale_batches else None


def scale_factor_batches(train_set, collater: Collater, seed: int, batch_size: int, count: int):
    """The first ``count`` batches of a single process's epoch-0 order, as whole graphs: each carries the
    partition of a one-rank group (``batch.part``), so ``batch.to(device)`` moves it with the batch."""
    order = EpochSampler(len(train_set), shuffle=True, seed=seed).indices(0)[:count * batch_size].tolist()
    whole = Collater(collater.cutoff, collater.max_neighbors, collater.symmetric, 0, 1, collater.triplets)
    return [whole([train_set[i] for i in order[k:k + batch_size]]) for k in range(0, len(order), batch_size)]


def start_new_run(model, name: str, args, train_set, collater: Collater, device) -> None:
    """A new run's model: GemNet scale factors (``--scale_file``, or fitted on rank 0), then rank 0's
    whole model (initial weights and scale factors) on every rank; there is no DDP wrapper to broadcast it."""
    if name.startswith("gemnet") and args.scale_file:
        load_scale_file(model, args.scale_file)
    elif name.startswith("gemnet") and args.fit_scale_batches and is_main_process():
        batches = [b.to(device) for b in scale_factor_batches(train_set, collater, args.seed, args.batch_size,
                                                              args.fit_scale_batches)]
        fit_scale_factors(model, batches)
        scales = [float(f.scale) for f in scale_factors_by_name(model).values()]
        print(f"fitted {len(scales)} GemNet scaling factors on rank 0: " + ", ".join(f"{s:.3g}" for s in scales),
              flush=True)
    broadcast_module(model)


def main(argv: Optional[List[str]] = None) -> dict:
    return train_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
