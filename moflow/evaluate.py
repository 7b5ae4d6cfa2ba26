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
from moflow.generate import load_trained_model, make_reverse, sample_smiles
from moflow.model import MoFlow
from runtime.cli import ArgumentParser, add_common_args
from runtime.cuda_graphs import require_cuda_graphs
from runtime.devicecheck import expected_sync
from runtime.distributed import init_distributed
from runtime.errors import ConfigError, run_main
from runtime.io import ensure_writable_dir
from runtime.logging import setup_logger
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
                    load_ckpt_path="results/moflow/moflow.pt", dllogger_name="evaluate_log.json")
    g = p.add_argument_group("evaluation")
    g.add_argument("--dataset", default=None, help="cache name (default: the checkpoint's training dataset)")
    g.add_argument("--split", choices=sorted(SPLITS), default="val", help="split for NLL and reconstruction")
    g.add_argument("--num_molecules", type=int, default=1000,
                   help="molecules of --split used for NLL and reconstruction (0 to skip)")
    g.add_argument("--num_samples", type=int, default=1000, help="molecules to generate")
    g.add_argument("--steps", type=int, default=None, help="NVIDIA's flag: generate this many batches (sets --num_samples)")
    g.add_argument("--temperature", type=float, default=0.6)
    g.add_argument("--output", default="results/moflow/metrics.json", help="metrics as JSON")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    env = init_distributed(timeout_minutes=args.dist_timeout, gpu_affinity=args.gpu_affinity)
    if args.cuda_graphs:
        require_cuda_graphs(env.device)
    seed_everything(args.seed, env.rank)
    if args.steps is not None:
        args.num_samples = args.steps * args.batch_size
    if args.num_samples <= 0:
        raise ConfigError(f"--num_samples must be positive, got {args.num_samples}")
    ensure_writable_dir(args.log_dir, "--log_dir")
    ensure_writable_dir(os.path.dirname(os.path.abspath(args.output)), "--output")
    model, info = load_trained_model(args.load_ckpt_path, env.device)
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
    if args.num_molecules > 0:
        metrics.update(split_metrics(model, cache, args.split, args.num_molecules, args.batch_size, precision))
    metrics.update(num_samples=args.num_samples, temperature=args.temperature)
    logger = setup_logger(args.log_dir, json_name=args.dllogger_name, wandb=args.wandb,
                          wandb_project=args.wandb_project, tensorboard=args.tensorboard, silent=True,
                          recipe="moflow", stdout=False)
    logger.log((), metrics)
    logger.close()
    with open(args.output, "w") as f:
        json.dump(metrics, f, indent=2)
    for k, v in metrics.items():
        print(f"{k:>28}: {v:.2f}" if isinstance(v, float) else f"{k:>28}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
