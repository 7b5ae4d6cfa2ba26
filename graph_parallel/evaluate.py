"""Metrics of a trained checkpoint on a split, next to trivial baselines: ``python -m graph_parallel.evaluate --help``.

    python -m graph_parallel.evaluate --load_ckpt_path results/graph_parallel/checkpoint.pt --split val
    torchrun --nproc_per_node 2 -m graph_parallel.evaluate --load_ckpt_path CKPT --gp_size 2

The checkpoint carries its model, config, radius graph, energy normaliser and (from training) the
baselines; the data is ``--dataset`` or the checkpoint's. The graph is the one the calculator builds
(:func:`graph_parallel.models.model_graph`): for a GemNet converted from fairchem, fairchem's
one-sided edge selection, so the metrics are fairchem's; ``--symmetric_edges`` chooses another.
Prints and logs ``{split}_energy_mae``,
``{split}_forces_mae``, ``{split}_forces_cos``, ``{split}_efwt``, ``{split}_loss``, ``{split}_size`` and
the baselines ``{split}_energy_mae_baseline_mean`` (predicting the training mean energy),
``{split}_energy_mae_baseline_linref`` (per-element linear reference energies fitted on the training
set) and ``{split}_forces_mae_baseline_zero`` (predicting zero forces). Under torchrun every
data-parallel group evaluates its own shard (every structure exactly once) and ``--gp_size`` ranks
split each graph. ``--benchmark`` measures inference throughput and latency instead.
"""
from __future__ import annotations

import sys
from typing import Dict, List, Optional

from runtime.cli import evaluation_summary
from runtime.distributed import is_main_process, shutdown
from runtime.errors import run_main
from runtime.logging import logger_from_args

from graph_parallel.engine import RECIPE, InferenceRun, benchmark_inference, build_inference_parser, evaluate_split, \
    world_info


def build_parser():
    return build_inference_parser("python -m graph_parallel.evaluate", __doc__.split("\n\n")[0],
                                  "evaluate")


def format_table(split: str, metrics: Dict[str, float]) -> str:
    """The model's errors beside the baselines, as printed at the end of an evaluation."""
    def cell(name):
        value = metrics.get(f"{split}_{name}")
        return f"{value:>12.4f}" if value is not None else f"{'-':>12}"

    header = f"{split} ({metrics[f'{split}_size']} structures)"
    lines = [f"{header:<22} {'model':>12} {'baseline:':>12} {'mean':>12} {'linref':>12} {'zero':>12}",
             f"{'energy MAE (eV)':<22} {cell('energy_mae')} {'':>12} {cell('energy_mae_baseline_mean')} "
             f"{cell('energy_mae_baseline_linref')} {'-':>12}",
             f"{'forces MAE (eV/A)':<22} {cell('forces_mae')} {'':>12} {'-':>12} {'-':>12} "
             f"{cell('forces_mae_baseline_zero')}",
             f"{'forces cosine':<22} {cell('forces_cos')}",
             f"{'EFwT (%)':<22} {cell('efwt')}"]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    try:
        run = InferenceRun(args)
        logger = logger_from_args(args, RECIPE, run_name=f"{run.info['name']}-evaluate")
        try:
            logger.log_params({**vars(args), "model": run.info["name"], "model_config": run.info["meta"].get("config"),
                               **world_info(run.grid)})
            if args.benchmark:
                result = benchmark_inference(run.model, run.loader, run.grid, run.precision, run.device,
                                             args.benchmark_warmup, args.benchmark_steps, logger)
            else:
                metrics = evaluate_split(run.model, run.loader, run.grid, run.precision, run.device, run.norm,
                                         run.baselines, run.energy_coef, run.force_coef)
                result = {f"{args.split}_{k}": v for k, v in metrics.items()}
                result.update(evaluation_summary(run.checkpoint, args.split, result[f"{args.split}_size"], run.model,
                                                 run.env.world_size))
                logger.log((), result)
                if is_main_process():
                    print(format_table(args.split, result), flush=True)
        finally:
            logger.close()
    finally:
        shutdown()
    return result


if __name__ == "__main__":
    sys.exit(run_main(main))
