"""Train the SE(3)-Transformer on a QM9 target: ``python -m se3_transformer.train --help``.

Multi-process: ``torchrun --nproc_per_node N -m se3_transformer.train ...`` (DDP; NCCL on GPUs, gloo on CPU).

=================  ===============================================================================
concern            rule
=================  ===============================================================================
loop               :class:`runtime.loop.TrainLoop` drives the run (accumulation with DDP no_sync,
                   logging, limits, checkpoints, exact mid-epoch resume); this file says what a
                   step, an evaluation and a checkpoint are.
loss / metrics     L1 on the standardised target (``train_loss``, ``val_loss``); ``val_mae`` in the
                   target's unit; ``val_mae_baseline_mean`` = MAE of predicting the training mean.
schedule           NVIDIA's: ``CosineAnnealingWarmRestarts(T_0=epochs, eta_min=min_learning_rate or
                   learning_rate / 10)`` stepped once per epoch, times an optional linear warm-up
                   over the first ``--warmup_steps`` optimizer steps. A function of the position,
                   so a resumed run gets the same rates.
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
import math
import os
import sys
from typing import List, Optional

import torch

from runtime.callbacks import PerformanceMeter, peak_memory_mb
from runtime.checkpoint import check_mid_epoch_resume, load_checkpoint, save_checkpoint
from runtime.cli import ArgumentParser, add_common_args, checkpoint_to_save, non_negative_int, optimizer_betas, \
    positive_float, resolve_num_workers, sgd_momentum
from runtime.compile import maybe_compile
from runtime.data import EpochSampler, ShardSampler, check_batch_size, make_loader
from runtime.distributed import barrier, init_distributed, is_main_process, shutdown, wrap_ddp
from runtime.errors import CheckpointError, ConfigError, run_main
from runtime.io import check_output_locations
from runtime.logging import logger_from_args
from runtime.loop import LoopConfig, Position, TrainLoop
from runtime.optim import make_optimizer
from runtime.precision import Precision, set_tf32
from runtime.progress import progress
from runtime.seed import seed_everything
from se3_transformer.data import DEFAULT_DATA_DIR, QM9_UNITS, QM9GraphDataset, load_qm9, precompute_bases, \
    split_indices
from se3_transformer.engine import RECIPE, TargetScaler, add_data_args, add_model_args, baseline_mae, build_model, \
    check_identity, evaluate_split, l1_loss, read_se3_checkpoint, resolve_model_args

CUDA_GRAPHS_REFUSED = ("--cuda_graphs is not supported by the SE(3)-Transformer: every batch of molecules has "
                       "other node and edge counts, so no fixed-shape step can be captured; drop the flag")


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


class CosineSchedule:
    """NVIDIA's SE(3) schedule as a function of the position.

    ``lr(epoch, step) = (eta_min + (lr - eta_min) (1 + cos(pi (epoch mod epochs) / epochs)) / 2)
    * min(1, (step + 1) / warmup_steps)``: the rate ``CosineAnnealingWarmRestarts(T_0=epochs,
    eta_min)`` gives when stepped once per epoch, times a linear warm-up. It holds no state, so a
    resumed run (any position) sets exactly the rates an uninterrupted run had.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, lr: float, min_lr: Optional[float], epochs: int,
                 warmup_steps: int = 0):
        self.optimizer, self.lr, self.epochs, self.warmup_steps = optimizer, lr, epochs, warmup_steps
        self.min_lr = lr / 10.0 if min_lr is None else min_lr

    def lr_at(self, epoch: int, step: int) -> float:
        t = (epoch % self.epochs) / self.epochs
        rate = self.min_lr + (self.lr - self.min_lr) * (1 + math.cos(math.pi * t)) / 2
        if self.warmup_steps:
            rate *= min(1.0, (step + 1) / self.warmup_steps)
        return rate

    def apply(self, epoch: int, step: int) -> None:
        """Set the rate of the optimizer step that follows ``step`` steps, in ``epoch``."""
        rate = self.lr_at(epoch, step)
        for group in self.optimizer.param_groups:
            group["lr"] = rate


def load_data(args, silent: bool):
    """Rank 0 reads (and if needed parses, caches or downloads) first; the other ranks then read."""
    def read():
        bar = None if silent or not is_main_process() else \
            (lambda it, total=None: progress(it, "parsing QM9", total))
        return load_qm9(args.dataset, args.data_dir, args.num_molecules, progress=bar,
                        create_parents=args.data_dir == DEFAULT_DATA_DIR)

    arrays = read() if is_main_process() else None
    barrier()
    return arrays if arrays is not None else read()


def main(argv: Optional[List[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    config = resolve_model_args(args)
    if args.cuda_graphs:
        raise ConfigError(CUDA_GRAPHS_REFUSED)
    if args.finetune and not args.load_ckpt_path:
        raise ConfigError("--finetune needs --load_ckpt_path (the checkpoint whose weights to start from)")
    env = init_distributed(timeout_minutes=args.dist_timeout, gpu_affinity=args.gpu_affinity,
                           device=args.device)
    device = env.device
    if args.tf32 is not None:
        set_tf32(args.tf32)
    save_path = checkpoint_to_save(args)
    if is_main_process():
        check_output_locations(args.log_dir, save_path)
    state = None
    meta = {"recipe": RECIPE, "model": RECIPE, "config": config, "task": args.task, "dataset": args.dataset}
    if args.load_ckpt_path:
        state = read_se3_checkpoint(args.load_ckpt_path)
        if args.finetune:
            check_identity(args.load_ckpt_path, state["meta"], {k: meta[k] for k in ("recipe", "model", "config")})
        else:
            check_identity(args.load_ckpt_path, state["meta"], meta,
                           hint="; to train its weights on another task or dataset, add --finetune")
    resuming = state is not None and not args.finetune
    logger = logger_from_args(args, RECIPE, run_name=f"se3_transformer_{args.task}", append=resuming)
    try:
        result = _train(args, env, device, config, meta, state, resuming, logger, save_path)
    finally:
        logger.close()
    shutdown()
    return result


def _train(args, env, device, config, meta, state, resuming, logger, save_path: str) -> dict:
    logger.log_params({**vars(args), "model_config": config})
    seed_everything(args.seed, env.rank)

    # ---- data ----
    arrays = load_data(args, args.silent)
    train_ids, val_ids, _ = split_indices(len(arrays), seed=0)
    check_batch_size(args.batch_size, len(train_ids), env.world_size, "molecules")
    model = build_model(config, device, args.fuse_level, args.low_memory, args.pad_trick)
    report = None if args.silent or not is_main_process() else print
    bases = precompute_bases(arrays, model.transformer.max_degree, report=report) if args.precompute_bases else None
    train_set = QM9GraphDataset(arrays, train_ids, args.task, bases, split="training")
    val_set = QM9GraphDataset(arrays, val_ids, args.task, bases, split="validation")
    extra = state["extra"] if state is not None else {}
    if resuming:
        if extra.get("num_molecules") != args.num_molecules:
            raise CheckpointError(f"checkpoint {args.load_ckpt_path} was trained with --num_molecules "
                                  f"{extra.get('num_molecules')}, this run has {args.num_molecules}: the splits "
                                  "would differ; pass the same value (or --finetune)")
        scaler = TargetScaler(**extra["target_scaler"])
    else:
        scaler = TargetScaler.fit(train_set.split_targets)
    unit = QM9_UNITS.get(args.task)

    workers = resolve_num_workers(args.num_workers, device)
    train_sampler = EpochSampler(len(train_set), shuffle=True, seed=args.seed, num_replicas=env.world_size,
                                 rank=env.rank)
    train_loader = make_loader(train_set, args.batch_size, train_sampler, train_set.collate, workers, device)
    val_loader = make_loader(val_set, args.batch_size, ShardSampler(len(val_set), env.world_size, env.rank),
                             val_set.collate, workers, device)

    # ---- model, optimizer, precision, schedule ----
    model = model.to(device)
    train_model = maybe_compile(wrap_ddp(model), args.compile)
    eval_model = train_model if env.world_size == 1 else maybe_compile(model, args.compile)  # no DDP in eval
    ddp = unwrap_compile(train_model)
    optimizer = make_optimizer(args.optimizer, model.parameters(), args.learning_rate, args.weight_decay,
                               momentum=sgd_momentum(args), betas=optimizer_betas(args))
    precision = Precision(args.amp, device, args.amp_dtype)
    schedule = CosineSchedule(optimizer, args.learning_rate, args.min_learning_rate, args.epochs, args.warmup_steps)
    position = Position()
    if state is not None:
        if resuming:
            info = load_checkpoint(args.load_ckpt_path, model, optimizer, None, precision, state=state,
                                   expect={k: meta[k] for k in ("recipe", "config", "task", "dataset")})
            position = Position.from_dict(info["position"])
            check_mid_epoch_resume(args.load_ckpt_path, extra, position, args.batch_size, env.world_size)
        else:
            load_checkpoint(args.load_ckpt_path, model, state=state)  # --finetune: weights only (strict)
    schedule.apply(position.epoch, position.step)

    baseline = baseline_mae(val_set.split_targets, scaler)
    for name in ("val_mae", "val_mae_baseline_mean"):
        logger.log_metadata(name, {"unit": unit, "format": ":.4f"})
    logger.log((), {"task": args.task, "train_size": len(train_set), "val_size": len(val_set),
                    "val_mae_baseline_mean": baseline, "world_size": env.world_size,
                    "parameters": sum(p.numel() for p in model.parameters())})
    if state is not None:
        logger.log((), {"resumed_from": args.load_ckpt_path})

    # ---- what the loop calls ----
    last_eval = {}

    def forward_backward(batch, loss_scale: float, pos: Position):
        batch = batch.to(device, non_blocking=True)
        with precision.autocast():
            pred = train_model(batch.graph, batch.basis)
        loss = l1_loss(pred, batch.graph.y, scaler)
        precision.backward(loss * loss_scale)
        return {"loss": loss.detach()}

    def optimizer_step(pos: Position):
        norm = precision.step(optimizer, clip_norm=args.gradient_clip)
        optimizer.zero_grad(set_to_none=True)
        schedule.apply(pos.epoch, pos.step + 1)       # the next step's rate
        return None if norm is None else {"grad_norm": norm}

    def end_epoch(pos: Position) -> None:
        schedule.apply(pos.epoch + 1, pos.step)

    def evaluate(epoch: int, scheduled: bool):
        result = evaluate_split(eval_model, val_loader, scaler, precision, device)
        last_eval["val_count"] = result["count"]
        return {"val_mae": result["mae"], "val_loss": result["loss"]}

    def save(pos: Position) -> None:
        if not save_path:
            return
        periodic = args.ckpt_interval > 0 or args.ckpt_steps > 0
        save_checkpoint(save_path, model, optimizer, None, precision, meta=meta, position=pos.to_dict(),
                        keep_last=args.keep_last if periodic else None,
                        extra={"target_scaler": scaler.state_dict(), "unit": unit,
                               "num_molecules": args.num_molecules, "batch_size": args.batch_size,
                               "replicas": env.world_size, "data_dir": os.path.abspath(args.data_dir)})

    meter = PerformanceMeter(device, warmup_steps=args.benchmark_warmup) if args.benchmark else None
    loop = TrainLoop(LoopConfig.from_args(args, seed_rank=env.rank, replicas=env.world_size), train_loader,
                     train_sampler, logger, forward_backward=forward_backward, optimizer_step=optimizer_step,
                     batch_items=lambda batch: batch.num_graphs, lr=lambda: optimizer.param_groups[0]["lr"],
                     evaluate=None if args.benchmark else evaluate, end_epoch=end_epoch,
                     save=None if args.benchmark else save,
                     no_sync=ddp.no_sync if isinstance(ddp, torch.nn.parallel.DistributedDataParallel) else None,
                     meter=meter)
    result = loop.run(position)
    if args.benchmark:
        result["peak_memory_mb"] = peak_memory_mb(device)
        logger.log((), {"peak_memory_mb": result["peak_memory_mb"]})
        result.update(meter.summary())
    result.update(val_mae_baseline_mean=baseline, **last_eval)
    return result


def unwrap_compile(model):
    """The module under torch.compile's wrapper (DDP stays)."""
    while hasattr(model, "_orig_mod"):
        model = model._orig_mod
    return model


if __name__ == "__main__":
    sys.exit(run_main(main))
