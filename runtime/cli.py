"""Shared argument groups, so every recipe has the same flag names and ``--help`` lists them."""
from __future__ import annotations

import argparse
from typing import Any

from runtime.optim import OPTIMIZERS


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text}")
    return value


DEFAULTS = dict(batch_size=32, epochs=10, learning_rate=1e-3, weight_decay=0.0, optimizer="adam", seed=0,
                num_workers=0, gradient_clip=None, accumulate_grad_batches=1, eval_interval=1, ckpt_interval=1,
                keep_last=3, data_dir="data_cache", log_dir="results", save_ckpt_path=None, load_ckpt_path=None,
                log_every=10, wandb_project="molrecipes", benchmark_warmup=10, benchmark_steps=50)


def add_common_args(parser: argparse.ArgumentParser, **defaults: Any) -> argparse.ArgumentParser:
    """Add the shared groups to ``parser``; keyword arguments override their defaults."""
    unknown = set(defaults) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"add_common_args got unknown defaults: {sorted(unknown)}")
    d = {**DEFAULTS, **defaults}

    paths = parser.add_argument_group("paths")
    paths.add_argument("--data_dir", default=d["data_dir"], help="dataset directory (raw files and caches)")
    paths.add_argument("--log_dir", default=d["log_dir"], help="directory for DLLogger JSON logs, W&B, TensorBoard")
    paths.add_argument("--save_ckpt_path", default=d["save_ckpt_path"], help="write checkpoints to this file")
    paths.add_argument("--load_ckpt_path", default=d["load_ckpt_path"], help="resume from / evaluate this checkpoint")
    paths.add_argument("--ckpt_interval", type=int, default=d["ckpt_interval"],
                       help="save a checkpoint every N epochs (<= 0: only at the end)")
    paths.add_argument("--keep_last", type=int, default=d["keep_last"], help="keep the newest N numbered checkpoints")

    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=positive_int, default=d["epochs"], help="number of training epochs")
    train.add_argument("--batch_size", type=positive_int, default=d["batch_size"], help="batch size per process")
    train.add_argument("--learning_rate", "--lr", dest="learning_rate", type=float, default=d["learning_rate"],
                       help="base learning rate")
    train.add_argument("--weight_decay", type=non_negative_float, default=d["weight_decay"], help="weight decay")
    train.add_argument("--optimizer", choices=OPTIMIZERS, default=d["optimizer"], help="optimizer")
    train.add_argument("--seed", type=int, default=d["seed"], help="random seed (each rank uses seed + rank)")
    train.add_argument("--num_workers", type=int, default=d["num_workers"], help="DataLoader worker processes")
    train.add_argument("--gradient_clip", type=float, default=d["gradient_clip"],
                       help="clip the global gradient norm to this value (off when unset)")
    train.add_argument("--accumulate_grad_batches", type=positive_int, default=d["accumulate_grad_batches"],
                       help="accumulate gradients over N batches per optimizer step")
    train.add_argument("--eval_interval", type=int, default=d["eval_interval"], help="evaluate every N epochs")

    prec = parser.add_argument_group("precision")
    prec.add_argument("--amp", action="store_true",
                      help="mixed precision: bf16 autocast on CPU, fp16 autocast + GradScaler on CUDA")
    prec.add_argument("--amp_dtype", choices=("fp16", "bf16"), default=None,
                      help="autocast dtype (default: fp16 on CUDA, bf16 on CPU)")
    prec.add_argument("--tf32", action="store_true", help="allow TF32 matmuls/convolutions on Ampere+ GPUs")

    perf = parser.add_argument_group("performance")
    perf.add_argument("--cuda_graphs", action="store_true", help="capture the step in a CUDA graph (CUDA only)")
    perf.add_argument("--compile", action="store_true", help="torch.compile the model")

    log = parser.add_argument_group("logging")
    log.add_argument("--wandb", action="store_true", help="log to Weights & Biases (offline without WANDB_API_KEY)")
    log.add_argument("--wandb_project", default=d["wandb_project"], help="W&B project name")
    log.add_argument("--tensorboard", action="store_true", help="also write TensorBoard event files")
    log.add_argument("--silent", action="store_true", help="no progress bars and no stdout metrics")
    log.add_argument("--log_every", type=positive_int, default=d["log_every"], help="log training metrics every N steps")

    bench = parser.add_argument_group("benchmark")
    bench.add_argument("--benchmark", action="store_true", help="measure throughput and latency instead of a full run")
    bench.add_argument("--benchmark_warmup", type=int, default=d["benchmark_warmup"], help="steps excluded from timing")
    bench.add_argument("--benchmark_steps", type=positive_int, default=d["benchmark_steps"], help="timed steps")
    return parser
