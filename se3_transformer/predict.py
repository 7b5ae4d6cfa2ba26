"""Per-molecule predictions of a trained checkpoint to a CSV: ``python -m se3_transformer.predict --help``.

Columns: ``index`` (the molecule's position in the dataset file), ``qm9_id`` (QM9's own id, when the
dataset has it), ``{task}_pred`` and ``{task}_true``, in the split's order, in the task's unit.
Under torchrun every rank predicts its own shard; the shards are gathered (one all-gather) and
rank 0 writes the file atomically, so the CSV is the same for any number of processes.
``--benchmark`` measures inference throughput and latency instead (no file).
"""
from __future__ import annotations

import csv
import os
import sys
from typing import List, Optional

import torch

from runtime.compile import maybe_compile
from runtime.devicecheck import expected_sync
from runtime.distributed import is_main_process, shutdown
from runtime.errors import run_main
from runtime.io import atomic_write, ensure_writable_dir
from runtime.logging import setup_logger
from se3_transformer.engine import RECIPE, InferenceRun, benchmark_inference, build_inference_parser, \
    gather_shards, predict_batches


def build_parser():
    parser = build_inference_parser("python -m se3_transformer.predict", __doc__.split("\n\n")[0],
                                    "predict")
    parser.add_argument("--output", default=None,
                        help="CSV file to write (default: LOG_DIR/predictions_SPLIT.csv)")
    return parser


def main(argv: Optional[List[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    output = args.output or os.path.join(args.log_dir, f"predictions_{args.split}.csv")
    run = InferenceRun(args)
    if is_main_process() and not args.benchmark:
        ensure_writable_dir(os.path.dirname(os.path.abspath(output)), "--output")
    model = maybe_compile(run.model, args.compile)
    logger = setup_logger(args.log_dir, json_name=args.dllogger_name, wandb=args.wandb,
                          wandb_project=args.wandb_project, tensorboard=args.tensorboard, silent=args.silent,
                          run_name=f"se3_transformer_predict_{run.task}", recipe=RECIPE)
    try:
        logger.log_params({**vars(args), "model_config": run.config})
        if args.benchmark:
            result = benchmark_inference(model, run.loader, run.precision, run.device, args.benchmark_warmup,
                                         args.benchmark_steps, logger)
        else:
            preds = [pred.detach() for _, pred in
                     predict_batches(model, run.loader, run.scaler, run.precision, run.device)]
            with expected_sync("predictions to the host"):          # one copy, after the last batch
                local = torch.cat(preds).cpu() if preds else torch.zeros(0)
            values = gather_shards(local, len(run.dataset)).numpy()
            if is_main_process():
                write_csv(output, run, values)
            result = {f"{args.split}_size": len(values), "task": run.task}
            logger.log((), result)
            result["output"] = output
    finally:
        logger.close()
    shutdown()
    return result


def write_csv(path: str, run: InferenceRun, values) -> None:
    ids = run.ids
    qm9_ids = run.arrays.qm9_index[ids] if run.arrays.qm9_index is not None else None
    truth = run.dataset.split_targets
    with atomic_write(path, "w", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["index", "qm9_id", f"{run.task}_pred", f"{run.task}_true"])
        for k, mol in enumerate(ids):
            writer.writerow([int(mol), "" if qm9_ids is None else int(qm9_ids[k]), f"{values[k]:.6f}",
                             f"{truth[k]:.6f}"])
    print(f"wrote {len(ids)} predictions to {path}")


if __name__ == "__main__":
    sys.exit(run_main(main))
