"""Train the SE(3)-Transformer on a QM9 target: ``python -m se3_transformer.train --help``.

Multi-process: ``torchrun --nproc_per_node N -m se3_transformer.train ...`` (DDP; NCCL on GPUs, gloo on CPU).

=================  ===============================================================================
concern            rule
=================  ===============================================================================
shape              the phases of :mod:`runtime.recipe` (parse -> config -> data -> model ->
                   optimizer -> resume -> loop -> finish) on a frozen :class:`TrainConfig`
loop               :class:`runtime.loop.TrainLoop` drives the run (accumulation with DDP no_sync,
                   logging, limits, checkpoints, exact mid-epoch resume); this file says what a
                   step, an evaluation and a checkpoint are.
loss / metrics     L1 on the standardised target (``train_loss``, ``val_loss``); ``val_mae`` in the
                   target's unit; ``val_mae_baseline_mean`` = MAE of predicting the training mean.
schedule           NVIDIA's (:class:`runtime.optim.CosineSchedule`): ``CosineAnnealingWarmRestarts(
                   T_0=epochs, eta_min=min_learning_rate or learning_rate / 10)`` stepped once per
                   epoch, times an optional linear warm-up over the first ``--warmup_steps``
                   optimizer steps. A function of the position, so a resumed run gets the same rates.
resume             ``--load_ckpt_path``: model, optimizer, loss scaler and position; the checkpoint's
                   recipe, architecture, task and dataset must match the run (CheckpointError naming
                   both sides). ``--finetune``: weights only, any task or dataset, a new optimizer
                   and schedule from position 0.
fail fast          ``--log_dir``, the ``--save_ckpt_path`` directory, the checkpoint to load and the
                   data are checked before the first step.
benchmark          ``--benchmark``: no evaluation, no checkpoints; logs ``train_throughput``
                   (molecules/s), ``train_latency_{mean,p50,p90,p95,p99}`` (ms), ``peak_memory_mb``.
=================  ===============================================================================
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch

from runtime.callbacks import PerformanceMeter, peak_memory_mb
from runtime.checkpoint import check_mid_epoch_resume, load_checkpoint, save_checkpoint
from runtime.cli import ArgumentParser, add_common_args, checkpoint_to_save, non_negative_int, optimizer_betas, \
    positive_float, resolve_num_workers, sgd_momentum
from runtime.compile import maybe_compile
from runtime.data import EpochSampler, ShardSampler, check_batch_size, make_loader
from runtime.distributed import barrier, is_main_process, wrap_ddp
from runtime.errors import CheckpointError, run_main
from runtime.loop import LoopConfig, Position, TrainLoop
from runtime.optim import CosineSchedule, make_optimizer
from runtime.precision import Precision
from runtime.progress import progress
from runtime.recipe import Optimization, RecipeConfig, train_main
from runtime.seed import seed_everything
from se3_transformer.data import DEFAULT_DATA_DIR, QM9_UNITS, QM9GraphDataset, load_qm9, precompute_bases, \
    split_indices
from se3_transformer.engine import RECIPE, TargetScaler, add_data_args, add_model_args, baseline_mae, build_model as \
    build_network, check_identity, evaluate_split, l1_loss, model_config, read_se3_checkpoint


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m se3_transformer.train", description=__doc__.split("\n\n")[0])
    add_common_args(parser, kind="train", batch_size=240, epochs=100, learning_rate=0.002, weight_decay=0.1,
                    optimizer="adamw", data_dir=DEFAULT_DATA_DIR,
                    log_dir="results/se3_transformer", benchmark_warmup=5, benchmark_steps=20)
    add_data_args(parser)
    add_model_args(parser)
    group = parser.add_argument_group("schedule")
    group.add_argument("--min_learning_rate", "--min_lr", dest="min_learning_rate", type=positive_float,
                       default=None, help="eta_min of the per-epoch cosine schedule (default: learning_rate / 10, "
                                          "as NVIDIA)")
    group.add_argument("--warmup_steps", type=non_negative_int, default=0,
                       help="linear learning-rate warm-up over the first N optimizer steps (NVIDIA: none)")
    return parser


@dataclass(frozen=True, kw_only=True)
class TrainConfig(RecipeConfig):
    model_config: Dict[str, Any]          # the architecture (engine.ARCH_KEYS)
    task: str
    unit: Optional[str]


@dataclass
class TrainData:
    train_set: QM9GraphDataset
    val_set: QM9GraphDataset
    train_loader: Any
    val_loader: Any
    sampler: EpochSampler
    scaler: TargetScaler


# ---- phases (runtime.recipe) ---------------------------------------------------------------------------
def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def build_config(args, env) -> TrainConfig:
    """The architecture from the flags (a preset's values where unset); a checkpoint must match it, and
    its task and dataset unless ``--finetune``."""
    config = model_config(args)
    meta = {"recipe": RECIPE, "model": RECIPE, "config": config, "task": args.task, "dataset": args.dataset}
    state = None
    if args.load_ckpt_path:
        state = read_se3_checkpoint(args.load_ckpt_path)
        if args.finetune:
            check_identity(args.load_ckpt_path, state["meta"], {k: meta[k] for k in ("recipe", "model", "config")})
        else:
            check_identity(args.load_ckpt_path, state["meta"], meta,
                           hint="; to train its weights on another task or dataset, add --finetune")
            saved = (state.get("extra") or {}).get("num_molecules")
            if saved != args.num_molecules:
                raise CheckpointError(f"checkpoint {args.load_ckpt_path} was trained with --num_molecules {saved}, "
                                      f"this run has {args.num_molecules}: the splits would differ; pass the same "
                                      "value (or --finetune)")
    return TrainConfig(flags=args, recipe=RECIPE, run_name=f"se3_transformer_{args.task}",
                       save_path=checkpoint_to_save(args), checkpoint=state, meta=meta, model_config=config,
                       task=args.task, unit=QM9_UNITS.get(args.task))


def load_data(config: TrainConfig, env) -> TrainData:
    """QM9 (rank 0 reads, parses or downloads first), its seeded split, the target scaler (the
    checkpoint's when resuming) and the loaders."""
    flags = config.flags
    seed_everything(flags.seed, env.rank)
    arrays = read_qm9(flags)
    train_ids, val_ids, _ = split_indices(len(arrays), seed=0)
    check_batch_size(flags.batch_size, len(train_ids), env.world_size, "molecules")
    bases = None
    if flags.precompute_bases:
        report = None if flags.silent or not is_main_process() else print
        bases = precompute_bases(arrays, config.model_config["num_degrees"] - 1, report=report)
    train_set = QM9GraphDataset(arrays, train_ids, config.task, bases, split="training")
    val_set = QM9GraphDataset(arrays, val_ids, config.task, bases, split="validation")
    if config.resuming:
        scaler = TargetScaler(**config.checkpoint_extra["target_scaler"])
    else:
        scaler = TargetScaler.fit(train_set.split_targets)
    workers = resolve_num_workers(flags.num_workers, env.device)
    sampler = EpochSampler(len(train_set), shuffle=True, seed=flags.seed, num_replicas=env.world_size, rank=env.rank)
    return TrainData(
        train_set=train_set, val_set=val_set, sampler=sampler, scaler=scaler,
        train_loader=make_loader(train_set, flags.batch_size, sampler, train_set.collate, workers, env.device),
        val_loader=make_loader(val_set, flags.batch_size, ShardSampler(len(val_set), env.world_size, env.rank),
                               val_set.collate, workers, env.device))


def build_model(config: TrainConfig, data: TrainData, env) -> torch.nn.Module:
    flags = config.flags
    return build_network(config.model_config, env.device, flags.fuse_level, bool(flags.low_memory),
                         bool(flags.pad_trick)).to(env.device)


def build_optimizer(config: TrainConfig, model, env) -> Optimization:
    flags = config.flags
    optimizer = make_optimizer(flags.optimizer, model.parameters(), flags.learning_rate, flags.weight_decay,
                               momentum=sgd_momentum(flags), betas=optimizer_betas(flags))
    schedule = CosineSchedule(optimizer, flags.learning_rate, flags.min_learning_rate, flags.epochs,
                              flags.warmup_steps)
    return Optimization(optimizer, schedule, Precision(flags.amp, env.device, flags.amp_dtype))


def resume(config: TrainConfig, model, optimization: Optimization, env) -> Position:
    """Resume: model, optimizer, loss scaler and position; ``--finetune``: the weights only (strict)."""
    position = Position()
    path = config.flags.load_ckpt_path
    if config.resuming:
        info = load_checkpoint(path, model, optimization.optimizer, None, optimization.precision,
                               state=config.checkpoint,
                               expect={k: config.meta[k] for k in ("recipe", "config", "task", "dataset")})
        position = Position.from_dict(info["position"])
        check_mid_epoch_resume(path, config.checkpoint_extra, position, config.flags.batch_size, env.world_size)
    elif config.checkpoint is not None:
        load_checkpoint(path, model, state=config.checkpoint)
    optimization.scheduler.apply(position.epoch, position.step)
    return position


def run_loop(config: TrainConfig, env, data: TrainData, model, optimization: Optimization, position: Position,
             logger) -> dict:
    flags, device = config.flags, env.device
    optimizer, schedule, precision = optimization.optimizer, optimization.scheduler, optimization.precision
    train_model = maybe_compile(wrap_ddp(model), flags.compile)
    eval_model = train_model if env.world_size == 1 else maybe_compile(model, flags.compile)  # no DDP in eval
    ddp = unwrap_compile(train_model)
    scaler = data.scaler
    logger.log_params({**vars(flags), "model_config": config.model_config})
    baseline = baseline_mae(data.val_set.split_targets, scaler)
    for name in ("val_mae", "val_mae_baseline_mean"):
        logger.log_metadata(name, {"unit": config.unit, "format": ":.4f"})
    logger.log((), {"task": config.task, "train_size": len(data.train_set), "val_size": len(data.val_set),
                    "val_mae_baseline_mean": baseline, "world_size": env.world_size,
                    "parameters": sum(p.numel() for p in model.parameters())})
    if config.checkpoint is not None:
        logger.log((), {"resumed_from": flags.load_ckpt_path})
    last_eval = {}

    def forward_backward(batch, loss_scale: float, pos: Position):
        batch = batch.to(device, non_blocking=True)
        with precision.autocast():
            pred = train_model(batch.graph, batch.basis)
        loss = l1_loss(pred, batch.graph.y, scaler)
        precision.backward(loss * loss_scale)
        return {"loss": loss.detach()}

    def optimizer_step(pos: Position):
        norm = precision.step(optimizer, clip_norm=flags.gradient_clip)
        optimizer.zero_grad(set_to_none=True)
        schedule.apply(pos.epoch, pos.step + 1)       # the next step's rate
        return None if norm is None else {"grad_norm": norm}

    def end_epoch(pos: Position) -> None:
        schedule.apply(pos.epoch + 1, pos.step)

    def evaluate(epoch: int, scheduled: bool):
        result = evaluate_split(eval_model, data.val_loader, scaler, precision, device)
        last_eval["val_count"] = result["count"]
        return {"val_mae": result["mae"], "val_loss": result["loss"]}

    def save(pos: Position) -> None:
        if not config.save_path:
            return
        periodic = flags.ckpt_interval > 0 or flags.ckpt_steps > 0
        save_checkpoint(config.save_path, model, optimizer, None, precision, meta=config.meta,
                        position=pos.to_dict(), keep_last=flags.keep_last if periodic else None,
                        extra={"target_scaler": scaler.state_dict(), "unit": config.unit,
                               "num_molecules": flags.num_molecules, "batch_size": flags.batch_size,
                               "replicas": env.world_size, "data_dir": os.path.abspath(flags.data_dir)})

    meter = PerformanceMeter(device, warmup_steps=flags.benchmark_warmup) if flags.benchmark else None
    loop = TrainLoop(LoopConfig.from_args(flags, seed_rank=env.rank, replicas=env.world_size), data.train_loader,
                     data.sampler, logger, forward_backward=forward_backward, optimizer_step=optimizer_step,
                     batch_items=lambda batch: batch.num_graphs, lr=lambda: optimizer.param_groups[0]["lr"],
                     evaluate=None if flags.benchmark else evaluate, end_epoch=end_epoch,
                     save=None if flags.benchmark else save,
                     no_sync=ddp.no_sync if isinstance(ddp, torch.nn.parallel.DistributedDataParallel) else None,
                     meter=meter)
    result = loop.run(position)
    if flags.benchmark:
        result["peak_memory_mb"] = peak_memory_mb(device)
        logger.log((), {"peak_memory_mb": result["peak_memory_mb"]})
        result.update(meter.summary())
    result.update(val_mae_baseline_mean=baseline, **last_eval)
    return result


# ---- helpers -------------------------------------------------------------------------------------------
def read_qm9(flags):
    """Rank 0 reads (and if needed parses, caches or downloads) first; the other ranks then read."""
    def read():
        bar = None if flags.silent or not is_main_process() else \
            (lambda it, total=None: progress(it, "parsing QM9", total))
        return load_qm9(flags.dataset, flags.data_dir, flags.num_molecules, progress=bar,
                        create_parents=flags.data_dir == DEFAULT_DATA_DIR)

    arrays = read() if is_main_process() else None
    barrier()
    return arrays if arrays is not None else read()


def unwrap_compile(model):
    """The module under torch.compile's wrapper (DDP stays)."""
    while hasattr(model, "_orig_mod"):
        model = model._orig_mod
    return model


def main(argv: Optional[List[str]] = None) -> dict:
    return train_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
