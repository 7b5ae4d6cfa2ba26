"""Evaluate a trained MoFlow: ``python -m moflow.evaluate --load_ckpt_path CKPT``.

Reports validity (with valency correction), validity without correction, uniqueness, novelty
against the training split (both sides canonical aromatic SMILES), N.U.V. and the reconstruction
rate (training molecules mapped to z and back must decode to the same graph).
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

from moflow.chem import decode_graphs, generation_metrics
from moflow.data.dataset import MoleculeCache
from moflow.generate import load_trained_model, sample_smiles
from moflow.model import MoFlow
from runtime.cli import add_common_args
from runtime.distributed import init_distributed
from runtime.logging import setup_logger
from runtime.precision import Precision
from runtime.seed import seed_everything


@torch.no_grad()
def reconstruction_rate(model: MoFlow, cache: MoleculeCache, n: int, batch_size: int = 256) -> float:
    """Percentage of the first ``n`` training molecules whose z -> graph inverse is exact."""
    data = cache.subset("train")
    n = min(n, len(data))
    if n == 0:
        raise ValueError("the training split is empty")
    model.eval()
    device = model.ln_var.device
    exact = 0
    for start in range(0, n, batch_size):
        items = [data[i] for i in range(start, min(start + batch_size, n))]
        x = torch.stack([it[0] for it in items]).to(device)
        adj = torch.stack([it[1] for it in items]).to(device)
        z_x, z_adj, _, _ = model(adj, x, dequantize=False)
        z = torch.cat([z_x.reshape(len(x), -1), z_adj.reshape(len(x), -1)], 1)
        atoms_rec, bonds_rec = decode_graphs(*model.reverse(z))
        atoms, bonds = decode_graphs(adj, x)
        same = (atoms_rec == atoms).all(1) & (bonds_rec == bonds).all((1, 2))
        exact += int(np.sum(same))
    return 100.0 * exact / n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(p, batch_size=500, log_dir="results/moflow", data_dir=None,
                    load_ckpt_path="results/moflow/moflow.pt")
    g = p.add_argument_group("evaluation")
    g.add_argument("--dataset", default=None, help="cache name for novelty (default: the training one)")
    g.add_argument("--num_samples", type=int, default=1000, help="molecules to generate")
    g.add_argument("--temperature", type=float, default=0.6)
    g.add_argument("--reconstruct_samples", type=int, default=500,
                   help="training molecules used for the reconstruction rate (0 to skip)")
    g.add_argument("--output", default="results/moflow/metrics.json", help="metrics as JSON")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    env = init_distributed()
    seed_everything(args.seed, env.rank)
    if args.num_samples <= 0:
        raise ValueError(f"--num_samples must be positive, got {args.num_samples}")
    model, extra = load_trained_model(args.load_ckpt_path, env.device)
    data_dir = args.data_dir or extra.get("data_dir")
    cache = MoleculeCache(data_dir, args.dataset or extra["dataset"])
    precision = Precision(args.amp, env.device, args.amp_dtype)
    generator = torch.Generator(device=env.device).manual_seed(args.seed)
    raw, corrected = sample_smiles(model, args.num_samples, args.temperature, extra["atomic_nums"],
                                   args.batch_size, precision, generator)
    metrics = generation_metrics(raw, corrected, cache.subset("train").smiles())
    if args.reconstruct_samples > 0:
        metrics["reconstruction"] = reconstruction_rate(model, cache, args.reconstruct_samples)
    metrics.update(num_samples=args.num_samples, temperature=args.temperature)
    logger = setup_logger(args.log_dir, json_name="evaluate_log.json", wandb=args.wandb,
                          wandb_project=args.wandb_project, tensorboard=args.tensorboard, silent=True)
    logger.log((), metrics)
    logger.close()
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(metrics, f, indent=2)
    if not args.silent:
        for k, v in metrics.items():
            print(f"{k:>28}: {v:.2f}" if isinstance(v, float) else f"{k:>28}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
