"""Train the SE(3)-Transformer on a QM9 target: ``python -m se3_transformer.train --help``.

L1 loss on the standardised target, MAE reported in the target's units (eV for homo), synchronised
across ranks. Multi-process: ``torchrun --nproc_per_node N -m se3_transformer.train ...`` (DDP).
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from runtime.callbacks import PerformanceMeter
from runtime.checkpoint import load_checkpoint, save_checkpoint
from runtime.cli import add_common_args
from runtime.compile import maybe_compile
from runtime.cuda_graphs import require_cuda_graphs
from runtime.distributed import all_reduce_mean, barrier, get_rank, init_distributed, is_main_process, shutdown, \
    wrap_ddp
from runtime.logging import setup_logger
from runtime.optim import make_optimizer, make_scheduler
from runtime.precision import Precision, set_tf32
from runtime.progress import progress
from runtime.seed import seed_everything
from se3_transformer.data import QM9_UNITS, QM9GraphDataset, load_qm9, precompute_bases, split_indices
from se3_transformer.engine import TargetScaler, add_data_args, add_model_args, build_model, evaluate, \
    log_benchmark, make_loader, model_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m se3_transformer.train", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(parser, batch_size=240, epochs=100, learning_rate=0.002, weight_decay=0.1, optimizer="adamw",
                    eval_interval=20, ckpt_interval=-1, data_dir="data_cache/se3_transformer",
                    log_dir="results/se3_transformer",
                    benchmark_warmup=5, benchmark_steps=20)
    add_data_args(parser)
    add_model_args(parser)
    group = parser.add_argument_group("schedule")
    group.add_argument("--min_lr", type=float, default=1e-5, help="final learning rate of the cosine schedule")
    group.add_argument("--warmup_steps", type=int, default=0, help="linear learning-rate warm-up steps")
    group.add_argument("--max_time_min", type=float, default=None,
                       help="stop training after this many minutes (checked after each epoch)")
    return parser


def _to_device(batch, basis, device):
    return batch.to(device), (None if basis is None else {k: v.to(device) for k, v in basis.items()})


def train_step(model, batch, basis, scaler: TargetScaler, precision, accumulate: int) -> torch.Tensor:
    with precision.autocast():
        pred = model(batch, basis)
    loss = F.l1_loss(pred.float(), scaler.scale(batch.y))
    if not torch.isfinite(loss):
        raise FloatingPointError(f"training loss is {loss.item()} (not finite): lower --learning_rate or "
                                 f"set --gradient_clip")
    precision.backward(loss / accumulate)
    return loss.detach()


def train_epoch(args, epoch: int, step: int, model, loader, scaler, precision, optimizer, scheduler, logger):
    """One pass over ``loader`` with gradient accumulation; returns (mean loss over ranks, global step)."""
    losses = []
    optimizer.zero_grad(set_to_none=True)
    for i, (batch, basis) in enumerate(progress(loader, f"epoch {epoch}", enabled=False if args.silent else None)):
        batch, basis = _to_device(batch, basis, precision.device)
        losses.append(train_step(model, batch, basis, scaler, precision, args.accumulate_grad_batches))
        if (i + 1) % args.accumulate_grad_batches == 0 or i + 1 == len(loader):
            precision.step(optimizer, clip_norm=args.gradient_clip)
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            if step % args.log_every == 0:
                logger.log((epoch, step), {"train loss": losses[-1].item(), "lr": scheduler.get_last_lr()[0]})
    return all_reduce_mean(torch.stack(losses).mean().to(precision.device)).item(), step


def run_benchmark(args, model, loader, scaler, precision, optimizer, device, logger) -> dict:
    """Time training steps (forward + backward + optimizer step) and report molecules/ms and latency."""
    meter = PerformanceMeter(device, warmup_steps=args.benchmark_warmup)
    total = args.benchmark_warmup + args.benchmark_steps
    done = 0
    while done < total:
        for batch, basis in loader:
            batch, basis = _to_device(batch, basis, device)
            meter.start()
            train_step(model, batch, basis, scaler, precision, 1)
            precision.step(optimizer, clip_norm=args.gradient_clip)
            optimizer.zero_grad(set_to_none=True)
            meter.stop(batch.num_graphs)
            done += 1
            if done >= total:
                break
    stats = log_benchmark(meter, logger, "train", device)
    return stats


def main(argv: Optional[list] = None) -> dict:
    args = build_parser().parse_args(argv)
    env = init_distributed()
    device = env.device
    seed_everything(args.seed, env.rank)
    if args.cuda_graphs:
        require_cuda_graphs(device)
        raise NotImplementedError("--cuda_graphs: graph shapes change every batch; capture is not supported here")
    set_tf32(args.tf32)
    logger = setup_logger(args.log_dir, wandb=args.wandb, wandb_project=args.wandb_project,
                          tensorboard=args.tensorboard, silent=args.silent, run_name="se3_transformer")
    logger.log_params(vars(args))

    # ---- data ----
    if is_main_process():  # rank 0 parses / downloads first so the cache is written once
        arrays = load_qm9(args.source, args.data_dir, args.num_molecules,
                          progress=lambda it, total=None: progress(it, "parsing QM9", total, enabled=False if args.silent else None))
    barrier()
    if not is_main_process():
        arrays = load_qm9(args.source, args.data_dir, args.num_molecules)
    train_ids, val_ids, _ = split_indices(len(arrays), seed=0)
    model = build_model(model_config(args), device)
    max_degree = model.transformer.max_degree
    bases = precompute_bases(arrays, max_degree) if args.precompute_bases else None
    train_set = QM9GraphDataset(arrays, train_ids, args.task, bases)
    val_set = QM9GraphDataset(arrays, val_ids, args.task, bases)
    scaler = TargetScaler.fit(train_set.targets[train_ids])
    train_loader = make_loader(train_set, args.batch_size, True, args.seed, args.num_workers)
    val_loader = make_loader(val_set, args.batch_size, False, args.seed, args.num_workers)
    unit = QM9_UNITS.get(args.task, "")
    baseline = float(np.mean(np.abs(val_set.targets[val_ids] - scaler.mean)))
    logger.log_metadata("validation MAE", {"unit": unit, "format": ":.4f"})
    logger.log_metadata("train loss", {"unit": None, "format": ":.4f"})
    logger.log((), {"molecules": len(arrays), "train": len(train_ids), "val": len(val_ids),
                    "val MAE of predicting the train mean": baseline})

    # ---- model, optimizer ----
    model = model.to(device)
    model = maybe_compile(wrap_ddp(model), args.compile)
    optimizer = make_optimizer(args.optimizer, model.parameters(), args.learning_rate, args.weight_decay)
    steps_per_epoch = max(1, -(-len(train_loader) // args.accumulate_grad_batches))
    scheduler = make_scheduler("cosine", optimizer, warmup_steps=args.warmup_steps,
                               total_steps=max(args.warmup_steps + 1, args.epochs * steps_per_epoch),
                               min_lr=args.min_lr)
    precision = Precision(args.amp, device, args.amp_dtype)
    start_epoch, step = 0, 0
    if args.load_ckpt_path:
        state = load_checkpoint(args.load_ckpt_path, model, optimizer, scheduler, precision, restore_rng=True)
        start_epoch, step = state["epoch"], state["step"]
        logger.log((), {"resumed from": args.load_ckpt_path, "epoch": start_epoch})

    if args.benchmark:
        stats = run_benchmark(args, model, train_loader, scaler, precision, optimizer, device, logger)
        logger.close()
        shutdown()
        return stats

    def checkpoint(epoch: int) -> None:
        if args.save_ckpt_path:
            save_checkpoint(args.save_ckpt_path, model, optimizer, scheduler, precision, epoch=epoch, step=step,
                            extra={"model_config": model_config(args), "target_scaler": scaler.state_dict(),
                                   "task": args.task, "unit": unit, "source": args.source,
                                   "num_molecules": args.num_molecules},
                            keep_last=args.keep_last if args.ckpt_interval > 0 else None)

    # ---- training loop ----
    started = time.time()
    history = {"train_loss": [], "val_mae": []}
    model.train()
    epochs_done = start_epoch
    for epoch in range(start_epoch, args.epochs):
        if getattr(train_loader.sampler, "set_epoch", None):
            train_loader.sampler.set_epoch(epoch)
        epoch_loss, step = train_epoch(args, epoch, step, model, train_loader, scaler, precision, optimizer,
                                       scheduler, logger)
        history["train_loss"].append(epoch_loss)
        epochs_done = epoch + 1
        logger.log((epoch, step), {"train loss": epoch_loss})
        out_of_time = args.max_time_min is not None and time.time() - started > 60 * args.max_time_min
        last = epoch + 1 == args.epochs or out_of_time
        if args.eval_interval > 0 and ((epoch + 1) % args.eval_interval == 0 or last):
            val = evaluate(model, val_loader, scaler, precision, device)
            history["val_mae"].append(val["mae"])
            logger.log((epoch, step), {"validation MAE": val["mae"]})
        if args.ckpt_interval > 0 and (epoch + 1) % args.ckpt_interval == 0 and not last:
            checkpoint(epoch + 1)
        if out_of_time:
            logger.log((), {"stopped": f"--max_time_min {args.max_time_min} reached after epoch {epoch}"})
            break
    checkpoint(epochs_done)
    final = evaluate(model, val_loader, scaler, precision, device)
    summary = {"validation MAE": final["mae"], "val MAE of predicting the train mean": baseline,
               "train minutes": (time.time() - started) / 60, "epochs run": epochs_done - start_epoch}
    logger.log((), summary)
    logger.close()
    shutdown()
    return {**history, "final_val_mae": final["mae"], "baseline_val_mae": baseline}


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        if get_rank() == 0:
            print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
