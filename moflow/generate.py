"""Sample molecules from a trained MoFlow: ``python -m moflow.generate --load_ckpt_path CKPT``.

Latents are drawn from N(0, (temperature * sigma)^2) with the learned prior variance, mapped back
through the exact inverse, decoded, optionally valency-corrected, and written as SMILES plus a
PNG grid drawn with RDKit. ``--benchmark`` measures inference throughput and latency instead.
"""
import argparse
import contextlib
import os
import sys
from typing import List, Optional, Tuple

import torch

from moflow.chem import construct_mol, correct_mol, decode_graphs, valid_smiles
from moflow.config import ModelConfig
from moflow.model import MoFlow
from runtime.callbacks import PerformanceMeter
from runtime.checkpoint import load_checkpoint, read_checkpoint
from runtime.cli import add_common_args
from runtime.compile import maybe_compile
from runtime.distributed import init_distributed
from runtime.logging import setup_logger
from runtime.precision import Precision
from runtime.seed import seed_everything


def load_trained_model(path: str, device) -> Tuple[MoFlow, dict]:
    """Rebuild the model from the config stored in a training checkpoint and load its weights."""
    extra = read_checkpoint(path).get("extra", {})
    if "model_config" not in extra or "atomic_nums" not in extra:
        raise ValueError(f"{path} is not a MoFlow training checkpoint (no model_config/atomic_nums)")
    model = MoFlow(ModelConfig.from_dict(extra["model_config"]))
    load_checkpoint(path, model, restore_rng=False)
    return model.to(device).eval(), extra


@torch.no_grad()
def sample_graphs(model: MoFlow, n: int, temperature: float, precision: Optional[Precision] = None,
                  generator: Optional[torch.Generator] = None, reverse=None):
    """Sample ``n`` molecules; returns (atom codes [n, N], bond codes [n, N, N]) numpy arrays."""
    z = model.sample_latent(n, temperature, generator=generator)
    reverse = reverse or model.reverse
    with precision.autocast() if precision is not None else contextlib.nullcontext():
        adj, x = reverse(z)
    return decode_graphs(adj.float(), x.float())


def decode_smiles(atom_codes, bond_codes, atomic_nums) -> Tuple[List[Optional[str]], List[Optional[str]]]:
    """(SMILES without correction, SMILES with valency correction); None marks an invalid molecule."""
    raw, corrected = [], []
    for a, b in zip(atom_codes, bond_codes):
        mol = construct_mol(a, b, atomic_nums)
        raw.append(valid_smiles(mol))
        corrected.append(valid_smiles(correct_mol(mol)))
    return raw, corrected


def sample_smiles(model: MoFlow, n: int, temperature: float, atomic_nums, batch_size: int = 1000,
                  precision: Optional[Precision] = None, generator: Optional[torch.Generator] = None,
                  reverse=None):
    """Sample ``n`` molecules in batches; returns (raw SMILES, corrected SMILES) lists."""
    raw, corrected = [], []
    for start in range(0, n, batch_size):
        atoms, bonds = sample_graphs(model, min(batch_size, n - start), temperature, precision, generator,
                                     reverse)
        r, c = decode_smiles(atoms, bonds, atomic_nums)
        raw += r
        corrected += c
    return raw, corrected


def draw_grid(smiles: List[str], path: str, per_row: int = 5, size: int = 250) -> str:
    from rdkit import Chem
    from rdkit.Chem import Draw

    mols = [Chem.MolFromSmiles(s) for s in smiles if s]
    mols = [m for m in mols if m is not None]
    if not mols:
        raise ValueError("no valid molecule to draw")
    image = Draw.MolsToGridImage(mols, molsPerRow=per_row, subImgSize=(size, size))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    image.save(path)
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(p, batch_size=100, log_dir="results/moflow", data_dir="data/moflow",
                    load_ckpt_path="results/moflow/moflow.pt", benchmark_warmup=3, benchmark_steps=20)
    g = p.add_argument_group("generation")
    g.add_argument("--num_samples", type=int, default=100, help="molecules to generate")
    g.add_argument("--temperature", type=float, default=0.6, help="latent standard-deviation multiplier")
    g.add_argument("--no_correct_validity", action="store_true",
                   help="write molecules without valency correction (invalid ones are dropped)")
    g.add_argument("--output", default="results/moflow/generated.smi", help="SMILES output file")
    g.add_argument("--png", default="results/moflow/generated.png", help="grid image ('' to skip)")
    g.add_argument("--png_molecules", type=int, default=20, help="molecules drawn in the grid")
    return p


def benchmark_inference(model, args, precision, logger, device) -> dict:
    reverse = maybe_compile(model.reverse, args.compile)
    meter = PerformanceMeter(device, warmup_steps=args.benchmark_warmup)
    for _ in range(args.benchmark_warmup + args.benchmark_steps):
        meter.start()
        with torch.no_grad(), precision.autocast():
            reverse(model.sample_latent(args.batch_size, args.temperature))
        meter.stop(args.batch_size)
    return meter.log(logger, prefix="inference")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    env = init_distributed()
    if args.cuda_graphs:
        from runtime.cuda_graphs import require_cuda_graphs
        require_cuda_graphs(env.device)
    seed_everything(args.seed, env.rank)
    if not args.load_ckpt_path:
        raise ValueError("--load_ckpt_path is required")
    model, extra = load_trained_model(args.load_ckpt_path, env.device)
    precision = Precision(args.amp, env.device, args.amp_dtype)
    logger = setup_logger(args.log_dir, json_name="generate_log.json", wandb=args.wandb,
                          wandb_project=args.wandb_project, tensorboard=args.tensorboard, silent=args.silent)
    logger.log_params({k: v for k, v in vars(args).items()})
    if args.benchmark:
        benchmark_inference(model, args, precision, logger, env.device)
        logger.close()
        return 0
    if args.num_samples <= 0:
        raise ValueError(f"--num_samples must be positive, got {args.num_samples}")
    generator = torch.Generator(device=env.device).manual_seed(args.seed)
    raw, corrected = sample_smiles(model, args.num_samples, args.temperature, extra["atomic_nums"],
                                   args.batch_size, precision, generator,
                                   reverse=maybe_compile(model.reverse, args.compile))
    chosen = raw if args.no_correct_validity else corrected
    written = [s for s in chosen if s]
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        f.write("\n".join(written) + ("\n" if written else ""))
    n = args.num_samples
    logger.log((), {"generated": n, "written": len(written),
                    "validity_without_correction": 100.0 * sum(s is not None for s in raw) / n,
                    "validity": 100.0 * sum(s is not None for s in corrected) / n})
    if args.png and written:
        draw_grid(written[:args.png_molecules], args.png)
        print(f"wrote {args.output} and {args.png}")
    else:
        print(f"wrote {args.output}")
    logger.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
