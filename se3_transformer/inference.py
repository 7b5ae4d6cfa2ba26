"""Predict a QM9 target with a trained checkpoint: ``python -m se3_transformer.inference --help``.

The architecture, task and target scaling come from the checkpoint. Reports the MAE on the chosen
split (synchronised across ranks), optionally writes per-molecule predictions as CSV, or with
``--benchmark`` measures inference throughput (molecules/ms) and latency percentiles.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from typing import Optional

import numpy as np
import torch

from runtime.callbacks import PerformanceMeter
from runtime.checkpoint import load_checkpoint, read_checkpoint
from runtime.cli import add_common_args
from runtime.compile import maybe_compile
from runtime.cuda_graphs import require_cuda_graphs
from runtime.distributed import get_rank, init_distributed, is_main_process, shutdown
from runtime.logging import setup_logger
from runtime.precision import Precision, set_tf32
from se3_transformer.data import QM9GraphDataset, load_qm9, precompute_bases, split_indices
from se3_transformer.engine import FUSE_LEVELS, TargetScaler, add_data_args, build_model, evaluate, log_benchmark, \
    make_loader


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m se3_transformer.inference", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(parser, batch_size=400, data_dir="data_cache/se3_transformer",
                    log_dir="results/se3_transformer_inference",
                    benchmark_warmup=3, benchmark_steps=10)
    add_data_args(parser)
    parser.add_argument("--split", choices=("train", "val", "test"), default="test", help="which split to predict")
    parser.add_argument("--output", default=None, help="write predictions to this CSV file")
    parser.add_argument("--fuse_level", choices=("auto",) + tuple(FUSE_LEVELS), default=None,
                        help="override the checkpoint's kernel fusion level (results are identical)")
    return parser


def main(argv: Optional[list] = None) -> dict:
    args = build_parser().parse_args(argv)
    if not args.load_ckpt_path:
        raise ValueError("--load_ckpt_path is required: the checkpoint written by se3_transformer.train")
    env = init_distributed()
    device = env.device
    if args.cuda_graphs:
        require_cuda_graphs(device)
        raise NotImplementedError("--cuda_graphs: graph shapes change every batch; capture is not supported here")
    set_tf32(args.tf32)
    extra = read_checkpoint(args.load_ckpt_path)["extra"]
    if "model_config" not in extra or "target_scaler" not in extra:
        raise ValueError(f"{args.load_ckpt_path} was not written by se3_transformer.train (no model config)")
    config = dict(extra["model_config"])
    if args.fuse_level:
        config["fuse_level"] = args.fuse_level
    model = build_model(config, device)
    load_checkpoint(args.load_ckpt_path, model, restore_rng=False)
    model = maybe_compile(model.to(device).eval(), args.compile)
    scaler = TargetScaler(**extra["target_scaler"])
    task = extra.get("task", args.task)

    logger = setup_logger(args.log_dir, wandb=args.wandb, wandb_project=args.wandb_project,
                          tensorboard=args.tensorboard, silent=args.silent, run_name="se3_transformer_inference")
    logger.log_params({**vars(args), "model_config": config, "task": task})
    arrays = load_qm9(args.source, args.data_dir, args.num_molecules)
    split = dict(zip(("train", "val", "test"), split_indices(len(arrays), seed=0)))[args.split]
    bases = precompute_bases(arrays, model.transformer.max_degree) if args.precompute_bases else None
    dataset = QM9GraphDataset(arrays, split, task, bases)
    loader = make_loader(dataset, args.batch_size, False, args.seed, args.num_workers)
    precision = Precision(args.amp, device, args.amp_dtype)

    if args.benchmark:
        meter = PerformanceMeter(device, warmup_steps=args.benchmark_warmup)
        total, done = args.benchmark_warmup + args.benchmark_steps, 0
        with torch.no_grad():
            while done < total:
                for batch, basis in loader:
                    meter.start()
                    batch = batch.to(device)
                    basis = None if basis is None else {k: v.to(device) for k, v in basis.items()}
                    with precision.autocast():
                        model(batch, basis)
                    meter.stop(batch.num_graphs)
                    done += 1
                    if done >= total:
                        break
        stats = log_benchmark(meter, logger, "inference", device)
        logger.close()
        shutdown()
        return stats

    result = evaluate(model, loader, scaler, precision, device, collect=bool(args.output))
    unit = extra.get("unit", "")
    logger.log_metadata(f"{args.split} MAE", {"unit": unit, "format": ":.4f"})
    logger.log((), {f"{args.split} MAE": result["mae"], "molecules": result["count"], "task": task})
    if args.output and is_main_process():
        if env.world_size > 1:
            raise ValueError("--output writes rank 0's predictions only; run it in a single process")
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["molecule", f"{task}_pred", f"{task}_true"])
            index = arrays.qm9_index[split] if arrays.qm9_index is not None else split
            for mol, p, t in zip(index, result["pred"], result["target"]):
                writer.writerow([int(mol), f"{p:.6f}", f"{t:.6f}"])
    logger.close()
    shutdown()
    return {"mae": result["mae"], "count": result["count"]}


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        if get_rank() == 0:
            print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
