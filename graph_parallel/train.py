"""Train DimeNet++ / GemNet-T / GemNet-dT on S2EF energies and forces: ``python -m graph_parallel.train --help``.

    torchrun --nproc_per_node 2 -m graph_parallel.train --model dimenetpp --preset small --gp_size 2

=================  ================================================================================
concern            rule
=================  ================================================================================
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
from typing import Dict, List, Optional

import torch

from graph_parallel.data import Collater
from graph_parallel.ema import EMA
from graph_parallel.engine import DEFAULT_CUTOFF, DEFAULT_DATA_DIR, DEFAULT_MAX_NEIGHBORS, EMBEDDED, RECIPE, \
    RESULTS_DIR, add_data_args, add_grid_args, check_performance_flags, dataset_dir, dataset_name, eval_loader, \
    evaluate_split, forward, gather_peak_memory, make_collater, make_grid, make_precision, open_split, world_info
from graph_parallel.losses import EnergyBaselines, Normalizer, energy_statistics, s2ef_loss
from graph_parallel.models import MODELS, build_model, count_parameters, fit_scale_factors, load_scale_file, \
    model_from_config, scale_factors_by_name
from graph_parallel.parallel import sync_gradients
from runtime.callbacks import PerformanceMeter, peak_memory_mb
from runtime.checkpoint import check_meta, check_mid_epoch_resume, config_differences, load_checkpoint, \
    read_checkpoint, save_checkpoint
from runtime.cli import ArgumentParser, add_common_args, add_refused, checkpoint_to_save, non_negative_int, \
    optimizer_betas, resolve_num_workers, sgd_momentum
from runtime.data import EpochSampler, check_batch_size, make_loader
from runtime.distributed import broadcast_module, init_distributed, is_main_process, shutdown
from runtime.errors import CheckpointError, ConfigError, run_main
from runtime.io import check_output_locations
from runtime.logging import logger_from_args
from runtime.loop import LoopConfig, Position, TrainLoop
from runtime.optim import make_optimizer, make_scheduler
from runtime.precision import set_tf32


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


# ---- set-up ------------------------------------------------------------------------------------------
def check_flags(args) -> None:
    check_performance_flags(args)
    if args.finetune and not args.load_ckpt_path:
        raise ConfigError("--finetune needs --load_ckpt_path (the checkpoint whose weights to start from)")
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
    """(model, name, preset) of this run; a checkpoint's identity is checked here (see the module table)."""
    path = args.load_ckpt_path
    meta = (state or {}).get("meta") or {}
    extra = (state or {}).get("extra") or {}
    if state is not None:
        if meta.get("recipe") not in (None, RECIPE):      # None: written before meta carried the identity
            raise CheckpointError(f"checkpoint {path} does not match this run: recipe: checkpoint has "
                                  f"{meta.get('recipe')!r}, this run has {RECIPE!r}")
        name = meta.get("model") or extra.get("model_name")
        config = meta.get("config") or extra.get("config")
        if args.model is not None and args.model != name:
            raise CheckpointError(f"checkpoint {path} does not match this run: model: checkpoint has {name!r}, "
                                  f"this run has {args.model!r}")
        if name not in MODELS or not isinstance(config, dict):
            raise CheckpointError(f"checkpoint {path} does not say which graph_parallel model it holds")
        args.model = name
        if args.cutoff is None:
            args.cutoff = float(config.get("cutoff", DEFAULT_CUTOFF))
        if args.max_neighbors is None:
            args.max_neighbors = int(extra.get("max_neighbors") or DEFAULT_MAX_NEIGHBORS)
        if args.finetune:                  # the architecture is the checkpoint's (converted ones too)
            differ = [f"{k}: checkpoint has {config.get(k)!r}, --fairchem_config has {v!r}"
                      for k, v in (getattr(args, "model_config", None) or {}).items() if config.get(k) != v]
            if differ:
                raise ConfigError(f"--fairchem_config disagrees with checkpoint {path}: " + "; ".join(differ)
                                  + " (--finetune keeps the checkpoint's architecture)")
            if args.preset is not None:
                try:
                    wanted = build_model(name, args.preset, cutoff=args.cutoff).config_dict()
                except ValueError as err:
                    raise ConfigError(str(err)) from None
                differ = config_differences(config, wanted)
                if differ:
                    raise ConfigError(f"--preset {args.preset} disagrees with checkpoint {path}: " + "; ".join(differ)
                                      + " (--finetune keeps the checkpoint's architecture: drop --preset)")
            try:
                model = model_from_config(name, config)
            except (TypeError, ValueError) as err:
                raise CheckpointError(f"checkpoint {path}: cannot build {name} from its config ({err})") from None
            return model, name, extra.get("preset")
    args.model = args.model or "dimenetpp"
    args.preset = args.preset or (extra.get("preset") if state is not None else None) or "base"
    args.cutoff = DEFAULT_CUTOFF if args.cutoff is None else args.cutoff
    args.max_neighbors = DEFAULT_MAX_NEIGHBORS if args.max_neighbors is None else args.max_neighbors
    try:
        model = build_model(args.model, args.preset, cutoff=args.cutoff, **(getattr(args, "model_config", None) or {}))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if state is not None:                  # resume: the same architecture
        differ = config_differences(config, model.config_dict())
        if differ:
            raise CheckpointError(f"checkpoint {path} has another architecture: " + "; ".join(differ)
                                  + " (pass the checkpoint's --preset and --cutoff, or --finetune)")
    return model, args.model, args.preset


def scale_factor_batches(train_set, collater: Collater, seed: int, batch_size: int, count: int):
    """The first ``count`` batches of a single process's epoch-0 order, as whole graphs: each carries the
    partition of a one-rank group (``batch.part``), so ``batch.to(device)`` moves it with the batch."""
    order = EpochSampler(len(train_set), shuffle=True, seed=seed).indices(0)[:count * batch_size].tolist()
    whole = Collater(collater.cutoff, collater.max_neighbors, collater.symmetric, 0, 1, collater.triplets)
    return [whole([train_set[i] for i in order[k:k + batch_size]]) for k in range(0, len(order), batch_size)]


def start_new_run(model, args, train_set, collater: Collater, device) -> Optional[str]:
    """A new run's model: GemNet scale factors (fitted on rank 0, or a file), then rank 0's whole model
    (initial weights and scale factors) on every rank; there is no DDP wrapper to broadcast it."""
    source = set_scale_factors(model, args, train_set, collater, device)
    broadcast_module(model)
    return source


def set_scale_factors(model, args, train_set, collater: Collater, device) -> Optional[str]:
    """GemNet scale factors of a new run: from ``--scale_file``, or fitted on rank 0 (the caller then
    broadcasts rank 0's whole model)."""
    if not args.model.startswith("gemnet"):
        return None
    if args.scale_file:
        load_scale_file(model, args.scale_file)
        return f"file {args.scale_file}"
    if args.fit_scale_batches == 0:
        return None
    if is_main_process():
        batches = [b.to(device) for b in scale_factor_batches(train_set, collater, args.seed, args.batch_size,
                                                              args.fit_scale_batches)]
        fit_scale_factors(model, batches)
        scales = [float(f.scale) for f in scale_factors_by_name(model).values()]
        print(f"fitted {len(scales)} GemNet scaling factors on rank 0: " + ", ".join(f"{s:.3g}" for s in scales),
              flush=True)
    return "fitted"


# ---- main --------------------------------------------------------------------------------------------
def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The flags; with ``--fairchem_config`` the file's values become defaults, so command-line flags win."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.fairchem_config:
        from graph_parallel.engine import EMBEDDED
        from graph_parallel.fairchem_config import fairchem_defaults

        parser.set_defaults(**fairchem_defaults(args.fairchem_config, dataset_given=args.dataset != EMBEDDED))
        args = parser.parse_args(argv)
    return args


def main(argv: Optional[List[str]] = None) -> dict:
    args = parse_args(argv)
    check_flags(args)
    env = init_distributed(timeout_minutes=args.dist_timeout, gpu_affinity=args.gpu_affinity,
                           device=args.device)
    try:
        return train(args, env)
    finally:
        shutdown()


def train(args, env) -> dict:
    device = env.device
    grid = make_grid(args.gp_size)
    if args.tf32 is not None:
        set_tf32(args.tf32)
    save_path = checkpoint_to_save(args)
    if is_main_process():
        check_output_locations(args.log_dir, save_path)

    # ---- data and checkpoint, checked before any work ----
    root = dataset_dir(args.dataset, args.data_dir)
    dataset_path = None if args.dataset == EMBEDDED else str(root.resolve())  # evaluate from any directory
    train_set = open_split(root, "train")
    check_batch_size(args.batch_size, len(train_set), grid.dp_size, "structures")
    val_set = open_split(root, "val", required=False)
    state = read_checkpoint(args.load_ckpt_path) if args.load_ckpt_path else None
    resuming = state is not None and not args.finetune
    torch.manual_seed(args.seed)                       # identical initial weights on every rank
    model, name, preset = resolve_model(args, state)
    data_name = dataset_name(args.dataset, args.data_dir)
    meta = {"recipe": RECIPE, "model": name, "config": model.config_dict(), "dataset": data_name}
    if resuming:
        try:
            check_meta(args.load_ckpt_path, state["meta"], {"dataset": data_name})
        except CheckpointError as err:
            raise CheckpointError(f"{err}; to train its weights on this dataset, add --finetune") from None
    extra = state["extra"] if state is not None else {}
    if resuming:
        norm = Normalizer(**extra["normalizer"])
        baselines = EnergyBaselines.from_state(extra["baselines"]) if extra.get("baselines") else \
            energy_statistics(train_set)[1]
    else:
        norm, baselines = energy_statistics(train_set)
    precision = make_precision(args, device)

    collater = make_collater(model, args.cutoff, args.max_neighbors, grid)
    workers = resolve_num_workers(args.num_workers, device)
    sampler = EpochSampler(len(train_set), shuffle=True, seed=args.seed, num_replicas=grid.dp_size, rank=grid.dp_rank)
    loader = make_loader(train_set, args.batch_size, sampler, collater, workers, device)
    val_loader = eval_loader(val_set, args.batch_size, collater, grid, workers, device) if val_set is not None else None

    # ---- model, optimizer, schedule, EMA ----
    model = model.to(device)
    scale_source = extra.get("scale_factors") if state is not None else \
        start_new_run(model, args, train_set, collater, device)
    optimizer = make_optimizer(args.optimizer, model.parameters(), args.learning_rate, args.weight_decay,
                               momentum=sgd_momentum(args), betas=optimizer_betas(args))
    scheduler = make_scheduler(args.scheduler, optimizer, warmup_steps=args.warmup_steps, step_size=args.lr_step_size,
                               gamma=args.lr_gamma, patience=args.lr_patience, factor=args.lr_factor)
    position = Position()
    if state is not None:
        if resuming:
            info = load_checkpoint(args.load_ckpt_path, model, optimizer, scheduler, precision, state=state)
            position = Position.from_dict(info["position"])
            check_mid_epoch_resume(args.load_ckpt_path, extra, position, args.batch_size, grid.dp_size)
        else:
            load_checkpoint(args.load_ckpt_path, model, state=state)      # --finetune: the weights only
    ema = EMA(model, args.ema_decay) if args.ema_decay > 0 else None
    if ema is not None and resuming and extra.get("ema"):
        ema.load_state_dict(extra["ema"], where=f"checkpoint {args.load_ckpt_path}")

    logger = logger_from_args(args, RECIPE, run_name=f"{name}-gp{args.gp_size}", append=resuming)
    try:
        return _run(args, device, grid, model, name, preset, meta, norm, baselines, precision, optimizer, scheduler,
                    ema, loader, sampler, val_loader, train_set, val_set, position, save_path, scale_source, logger,
                    dataset_path)
    finally:
        logger.close()


def _run(args, device, grid, model, name, preset, meta, norm, baselines, precision, optimizer, scheduler, ema,
         loader, sampler, val_loader, train_set, val_set, position, save_path, scale_source, logger,
         dataset_path) -> dict:
    n_params = count_parameters(model)
    logger.log_params({**vars(args), "save_ckpt_path": save_path, "model_config": meta["config"],
                       "normalizer": norm.state_dict()})
    logger.log((), {"parameters": n_params, "train_size": len(train_set), "val_size": len(val_set or []),
                    **world_info(grid)})
    if args.load_ckpt_path:
        logger.log((), {"resumed_from": args.load_ckpt_path})
    if is_main_process():
        print(f"{name}/{preset or 'checkpoint config'}: {n_params:,} parameters; {grid}; {len(train_set)} train / "
              f"{len(val_set or [])} val structures; {precision}", flush=True)
        if val_set is None:
            print("no val split in the dataset: training without evaluation", flush=True)
    compute_forces = args.force_coef > 0

    def forward_backward(batch, loss_scale: float, pos: Position):
        batch = batch.to(device, non_blocking=True)
        energy, forces = forward(model, batch, grid, precision, compute_forces=compute_forces, create_graph=True)
        loss, value = s2ef_loss(energy, forces, batch, norm, args.energy_coef, args.force_coef, grid.dp_group)
        precision.backward(loss * loss_scale)
        return {"loss": value}

    def optimizer_step(pos: Position):
        sync_gradients(model.parameters())
        grad_norm = precision.step(optimizer, model.parameters(), clip_norm=args.gradient_clip)
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()                              # per-step warm-up, or the step schedule
        if ema is not None:
            ema.update(model)
        return None if grad_norm is None else {"grad_norm": grad_norm}

    def evaluate(epoch: int, scheduled: bool) -> Dict[str, float]:
        if val_loader is None:
            return {}
        metrics = evaluate_split(ema.module if ema is not None else model, val_loader, grid, precision, device,
                                 norm, baselines, args.energy_coef, args.force_coef)
        metrics.pop("size")
        if scheduled and scheduler.plateau is not None:
            scheduler.step(metrics["loss"])
        return {f"val_{k}": v for k, v in metrics.items()}

    def save(pos: Position) -> None:
        if not save_path:
            return
        periodic = args.ckpt_interval > 0 or args.ckpt_steps > 0
        extra = {"normalizer": norm.state_dict(), "baselines": baselines.state_dict(), "cutoff": float(args.cutoff),
                 "max_neighbors": int(args.max_neighbors), "preset": preset,
                 "ema": ema.state_dict() if ema is not None else None, "source": "graph_parallel.train",
                 "scale_factors": scale_source, "energy_coef": args.energy_coef, "force_coef": args.force_coef,
                 "batch_size": args.batch_size, "replicas": grid.dp_size, "dp_size": grid.dp_size,
                 "gp_size": grid.gp_size,
                 "dataset_path": dataset_path}
        save_checkpoint(save_path, model, optimizer, scheduler, precision, meta=meta, position=pos.to_dict(),
                        extra=extra, keep_last=args.keep_last if periodic else None)

    meter = PerformanceMeter(device, warmup_steps=args.benchmark_warmup) if args.benchmark else None
    before = peak_memory_mb(device)
    loop = TrainLoop(LoopConfig.from_args(args, seed_rank=grid.dp_rank, replicas=grid.dp_size), loader, sampler,
                     logger, forward_backward=forward_backward, optimizer_step=optimizer_step,
                     batch_items=lambda batch: batch.num_structures, lr=lambda: optimizer.param_groups[0]["lr"],
                     evaluate=None if args.benchmark else evaluate, save=None if args.benchmark else save,
                     meter=meter)
    result = loop.run(position)
    if args.benchmark:
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
    result["save_ckpt_path"] = save_path
    return result


if __name__ == "__main__":
    sys.exit(run_main(main))
