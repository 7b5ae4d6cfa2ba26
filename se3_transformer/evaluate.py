"""MAE of a trained checkpoint on a QM9 split: ``python -m se3_transformer.evaluate --help``.

The checkpoint carries its architecture, task, dataset, subset size and target scaling; model flags
on the command line (NVIDIA's scripts pass them) must agree with it. Prints and logs
``{split}_mae`` beside ``{split}_mae_baseline_mean`` (predicting the training mean), plus
``{split}_loss`` and ``{split}_size``. Under torchrun every rank evaluates its own shard and every
molecule is counted exactly once. ``--benchmark`` measures inference throughput (molecules/s) and
latency instead.
"""
from __future__ import annotations

import sys
from typing import List, Optional

from runtime.cli import evaluation_summary
from runtime.compile import maybe_compile
from runtime.distributed import shutdown
from runtime.errors import run_main
from runtime.logging import logger_from_args
from se3_transformer.engine import RECIPE, InferenceRun, baseline_mae, benchmark_inference, \
    build_inference_parser, evaluate_split


def build_parser():
    return build_inference_parser("python -m se3_transformer.evaluate", __doc__.split("\n\n")[0],
                                  "evaluate")


def main(argv: Optional[List[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    run = InferenceRun(args)
    model = maybe_compile(run.model, args.compile)
    logger = logger_from_args(args, RECIPE, run_name=f"se3_transformer_evaluate_{run.task}")
    try:
        logger.log_params({**vars(args), "model_config": run.config})
        if args.benchmark:
            result = benchmark_inference(model, run.loader, run.precision, run.device, args.benchmark_warmup,
                                         args.benchmark_steps, logger)
        else:
            split = args.split
            scores = evaluate_split(model, run.loader, run.scaler, run.precision, run.device)
            run.declare_units(logger, (f"{split}_mae", f"{split}_mae_baseline_mean"))
            result = {f"{split}_mae": scores["mae"],
                      f"{split}_mae_baseline_mean": baseline_mae(run.dataset.split_targets, run.scaler),
                      f"{split}_loss": scores["loss"], "task": run.task,
                      **evaluation_summary(run.checkpoint, split, scores["count"], run.model, run.env.world_size)}
            logger.log((), result)
    finally:
        logger.close()
    shutdown()
    return result


if __name__ == "__main__":
    sys.exit(run_main(main))
