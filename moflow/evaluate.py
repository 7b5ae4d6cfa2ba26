"""Evaluate a trained MoFlow: ``python -m moflow.evaluate --load_ckpt_path CKPT``.

On ``--split`` (``val``: the held-out molecules of the training cache; or ``train``) it reports the
NLL in bits/dim (``{split}_loss``, ``{split}_nll_x``, ``{split}_nll_adj``) and the reconstruction
rate (``{split}_reconstruction``: molecules mapped to z and back must decode to the same graph).
For ``--num_samples`` molecules sampled at ``--temperature`` it reports validity (with valency
correction), validity without correction, uniqueness, novelty and N.U.V. (generated-sample metrics
carry no split prefix). Novelty compares generated molecules with the training molecules decoded
through the same graph -> molecule path (stereochemistry and charges the model cannot produce do
not make a molecule novel), as the reference implementations do. The model config, dataset and atom set
come from the checkpoint.
"""
import json
import os
import sys
from typing import Dict

import torch

from moflow.chem import generation_metrics
from moflow.data.dataset import MoleculeCache
from moflow.generate import load_trained_model, make_reverse, sample_smiles, steps_to_samples
from moflow.model import MoFlow
from runtime.cli import ArgumentParser, add_common_args, checkpoint_to_load, evaluation_summary, non_negative_float, \
    non_negative_int, positive_int
from runtime.cuda_graphs import require_cuda_graphs
from runtime.devicecheck import expected_sync
from runtime.distributed import init_distributed
from runtime.errors import ConfigError, run_main
from runtime.io import atomic_write, check_output_locations
from runtime.logging import logger_from_args
from runtime.precision import Precision
from runtime.seed import seed_everything

SPLITS = {"val": "valid", "train": "train"}


@torch.no_grad()
def split_metrics(model: MoFlow, cache: MoleculeCache, split: str, n: int, batch_size: int,
                  precision: Precision) -> Dict[str, float]:
    """NLL (bits/dim, with dequantisation as in training) and exact-reconstruction rate of the first
    ``n`` molecules of ``split``."""
    data = cache.subset(SPLITS[split])
    n = min(n, len(data))
    if n == 0:
        raise ConfigError(f"the {split} split of {cache.spec.name} is empty")
    model.eval()
    device = model.ln_var.device
    sums = torch.zeros(4, dtype=torch.float64, device=device)       # loss, nll_x, nll_adj, reconstructed
    for start in range(0, n, batch_size):
        items = [data[i] for i in range(start, min(start + batch_size, n))]
        x = torch.stack([it[0] for it in items]).to(device, non_blocking=True)
        adj = torch.stack([it[1] for it in items]).to(device, non_blocking=True)
        with precision.autocast():
            nll_x, nll_adj = model.nll(*model(adj, x, dequantize=True), reduce=False)
        z_x, z_adj, _, _ = model(adj, x, dequantize=False)
        z = torch.cat([z_x.reshape(len(x), -1), z_adj.reshape(len(x), -1)], 1)
        adj_rec, x_rec = model.reverse(z)
        same = (x_rec.argmax(-1) == x.argmax(-1)).all(1) & (adj_rec.argmax(1) == adj.argmax(1)).all((1, 2))
        sums += torch.stack([(nll_x + nll_adj).sum(), nll_x.sum(), nll_adj.sum(), same.sum()]).double()
    with expected_sync("evaluation result"):
        totals = sums.tolist()
    return {f"{split}_loss": totals[0] / n, f"{split}_nll_x": totals[1] / n, f"{split}_nll_adj": totals[2] / n,
            f"{split}_reconstruction": 100.0 * totals[3] / n}


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m moflow.evaluate", description=__doc__)
    add_common_args(p, kind="eval", batch_size=500, log_dir="results/moflow", data_dir=None,
                    dllogger_name="evaluate_log.json")
    g = p.add_argument_group("evaluation")
    g.add_argument("--dataset", default=None, help="cache name (default: the checkpoint's training dataset)")
    g.add_argument("--split", choices=("test", "train", "val"), default="val",
                   help="split for NLL and reconstruction (MoFlow's datasets have train and val only, as the "
                        "reference's: its held-out molecules are the val split)")
    g.add_argument("--num_molecules", type=non_negative_int, default=1000,
                   help="molecules of --split used for NLL and reconstruction (0 to skip)")
    g.add_argument("--num_samples", type=positive_int, default=1000, help="molecules to generate")
    g.add_argument("--steps", type=positive_int, default=None,
                   help="NVIDIA's flag: generate this many batches (sets --num_samples)")
    g.add_argument("--temperature", type=non_negative_float, default=0.6, help="latent standard-deviation multiplier")
    g.add_argument("--output", default=None, help="metrics as JSON, *.json (default: LOG_DIR/metrics_SPLIT.json)")
    p.add_check(lambda args, given: steps_to_samples(args, given, benchmark=False))  # sampled, also when timed
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if args.split == "test":
        raise ConfigError("--split test: MoFlow's datasets have no test split (train and val, as the reference "
                          "implementation's); its held-out molecules are --split val")
    env = init_distributed(timeout_minutes=args.dist_timeout, gpu_affinity=args.gpu_affinity,
                           device=args.device)
    if args.cuda_graphs:
        require_cuda_graphs(env.device)
    seed_everything(args.seed, env.rank)
    output = args.output or os.path.join(args.log_dir, f"metrics_{args.split}.json")
    check_output_locations(args.log_dir, output=output)
    checkpoint = checkpoint_to_load(args)
    model, info = load_trained_model(checkpoint, env.device)
    data_dir = args.data_dir or info.get("data_dir")
    cache = MoleculeCache(data_dir, args.dataset or info["dataset"])
    if list(cache.spec.atomic_nums) != list(info["atomic_nums"]):
        raise ConfigError(f"dataset {cache.spec.name} in {data_dir} has atoms {cache.spec.atomic_nums}, the "
                          f"checkpoint was trained on {info['atomic_nums']}")
    precision = Precision(args.amp, env.device, args.amp_dtype)
    generator = torch.Generator(device=env.device).manual_seed(args.seed)
    raw, corrected = sample_smiles(model, args.num_samples, args.temperature, info["atomic_nums"],
                                   args.batch_size, None, generator, reverse=make_reverse(model, args, precision))
    metrics = generation_metrics(raw, corrected, cache.subset("train").decoded_smiles(), train_decoded=True)
    evaluated = min(args.num_molecules, len(cache.subset(SPLITS[args.split])))
    if args.num_molecules > 0:
        metrics.update(split_metrics(model, cache, args.split, args.num_molecules, args.batch_size, precision))
    metrics.update(num_samples=args.num_samples, temperature=args.temperature,
                   **evaluation_summary(checkpoint, args.split, evaluated, model, env.world_size))
    logger = logger_from_args(args, "moflow")
    logger.log((), metrics)
    logger.close()
    with atomic_write(output, "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2)
    return metrics


if __name__ == "__main__":
    sys.exit(run_main(main))
