"""Energies and forces of every structure of a split, to an ``.npz`` file: ``python -m graph_parallel.predict --help``.

    python -m graph_parallel.predict --load_ckpt_path CKPT --split val --output predictions.npz

The file (``numpy.load``) holds, in dataset order:

===================  ==========  ===========================================================
key                  shape       meaning
===================  ==========  ===========================================================
``index``            [B]         position of the structure in the split
``sid``, ``fid``     [B]         system and frame ids of the data
``natoms``           [B]         atoms per structure
``energy``           [B]         predicted energy (eV)
``forces``           [sum N, 3]  predicted forces (eV/A) of all atoms, structure after structure:
                                 structure i's rows start at ``cumsum(natoms)[i] - natoms[i]``
``energy_target``    [B]         the data's energy (eV)
``forces_target``    [sum N, 3]  the data's forces (eV/A)
===================  ==========  ===========================================================

The radius graph is the calculator's (``--symmetric_edges``: see graph_parallel.evaluate).
Under torchrun the data-parallel groups predict their shards (``--gp_size`` ranks split each
graph), the shards are gathered and rank 0 writes the file atomically: the same file for any
number of processes. ``--benchmark`` measures inference throughput and latency instead (no file).
"""
from __future__ import annotations

import io
import os
import sys
from typing import List, Optional

import numpy as np
import torch
import torch.distributed as dist

from runtime.cli import evaluation_summary, prediction_path
from runtime.devicecheck import expected_sync
from runtime.distributed import is_initialized, is_main_process, shutdown
from runtime.errors import run_main
from runtime.io import atomic_write, ensure_writable_dir
from runtime.logging import logger_from_args

from graph_parallel.engine import RECIPE, InferenceRun, benchmark_inference, build_inference_parser, forward, world_info

KEYS = ("index", "sid", "fid", "natoms", "energy", "forces", "energy_target", "forces_target")


def build_parser():
    parser = build_inference_parser("python -m graph_parallel.predict", __doc__.split("\n\n")[0],
                                    "predict")
    parser.add_argument("--output", default=None,
                        help="the .npz file to write (default: LOG_DIR/predictions_SPLIT.npz)")
    return parser


@torch.no_grad()
def predict_split(run: InferenceRun) -> dict:
    """This data-parallel group's shard: arrays of :data:`KEYS` (structures in shard order)."""
    parts = {k: [] for k in KEYS}
    std, mean = run.norm.std, run.norm.mean
    for batch in run.loader:
        batch = batch.to(run.device, non_blocking=True)
        energy, forces = forward(run.model, batch, run.grid, run.precision)
        values = {"index": batch.index, "sid": batch.sid, "fid": batch.fid, "natoms": batch.natoms,
                  "energy": energy.double() * std + mean, "forces": forces.double() * std,
                  "energy_target": batch.energy.double(), "forces_target": batch.forces.double()}
        for key, value in values.items():
            parts[key].append(value.detach())
    with expected_sync("predictions to the host"):                   # one copy, after the last batch
        return {k: torch.cat(v).cpu().numpy() if v else np.zeros((0, 3) if "forces" in k else 0)
                for k, v in parts.items()}


def merge_shards(shards: List[dict]) -> dict:
    """The shards of every data-parallel group, reordered by dataset index."""
    index = np.concatenate([s["index"] for s in shards])
    order = np.argsort(index, kind="stable")
    out = {k: np.concatenate([s[k] for s in shards])[order] for k in KEYS if "forces" not in k}
    for key in ("forces", "forces_target"):
        per_structure = [np.split(s[key], np.cumsum(s["natoms"])[:-1]) if len(s["natoms"]) else [] for s in shards]
        flat = [rows for shard in per_structure for rows in shard]
        out[key] = np.concatenate([flat[i] for i in order]) if flat else np.zeros((0, 3))
    return out


def gather_shards(local: dict, run: InferenceRun) -> dict:
    """All data-parallel shards on every rank (an object all-gather over the dp group, on the CPU)."""
    if not is_initialized() or run.grid.dp_size == 1:
        return merge_shards([local])
    shards = [None] * run.grid.dp_size
    dist.all_gather_object(shards, local, group=run.grid.dp_group)
    return merge_shards(shards)


def write_npz(path: str, arrays: dict) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    with atomic_write(path) as f:
        f.write(buffer.getvalue())


def main(argv: Optional[List[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    output = prediction_path(args.output, args.log_dir, args.split, ("npz",))
    try:
        run = InferenceRun(args, indexed=True)
        if is_main_process() and not args.benchmark:
            ensure_writable_dir(os.path.dirname(os.path.abspath(output)), "--output")
        logger = logger_from_args(args, RECIPE, run_name=f"{run.info['name']}-predict")
        try:
            logger.log_params({**vars(args), "model": run.info["name"], **world_info(run.grid)})
            if args.benchmark:
                result = benchmark_inference(run.model, run.loader, run.grid, run.precision, run.device,
                                             args.benchmark_warmup, args.benchmark_steps, logger)
            else:
                arrays = gather_shards(predict_split(run), run)
                if is_main_process():
                    write_npz(output, arrays)
                    print(f"wrote energies and forces of {len(arrays['energy'])} structures to {output}", flush=True)
                result = evaluation_summary(run.checkpoint, args.split, len(arrays["energy"]), run.model,
                                            run.env.world_size)
                logger.log((), result)
                result["output"] = output
        finally:
            logger.close()
    finally:
        shutdown()
    return result


if __name__ == "__main__":
    sys.exit(run_main(main))
