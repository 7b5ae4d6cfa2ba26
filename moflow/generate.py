"""Sample molecules from a trained MoFlow: ``python -m moflow.generate --load_ckpt_path CKPT``
(``python -m moflow.predict`` is the same entry point under the name every recipe shares).

Latents are drawn from N(0, (temperature * sigma)^2) with the learned prior variance, mapped back
through the exact inverse, decoded, valency-corrected (``--correct_validity false`` to keep raw
molecules only), and written as SMILES plus a PNG grid drawn with RDKit. ``--benchmark`` measures
inference throughput and latency instead. ``--cuda_graphs`` (CUDA only) captures the reverse pass
for full batches; a last, smaller batch runs eagerly.
"""
import contextlib
import os
import sys
from typing import List, Optional, Tuple

import torch

from moflow.chem import construct_mol, correct_mol, decode_graphs, sample_quality, valid_smiles
from moflow.config import MODEL_PRESETS, QM9_ATOMS, ZINC_ATOMS, ModelConfig, make_model_config
from moflow.model import MoFlow
from runtime.callbacks import PerformanceMeter
from runtime.devicecheck import expected_sync
from runtime.checkpoint import load_checkpoint, read_checkpoint
from runtime.cli import ArgumentParser, add_bool, add_common_args, checkpoint_to_load, evaluation_summary, \
    prediction_path, non_negative_float, \
    non_negative_int, positive_int, refuse_unused
from runtime.compile import maybe_compile
from runtime.cuda_graphs import capture_inference, require_cuda_graphs
from runtime.distributed import init_distributed
from runtime.errors import CheckpointError, ConfigError, run_main
from runtime.io import atomic_write, check_output_locations
from runtime.logging import logger_from_args
from runtime.precision import Precision
from runtime.seed import seed_everything


SPLIT = "samples"  # predictions_samples.smi: a generative model's predictions are its samples


def load_trained_model(path: str, device) -> Tuple[MoFlow, dict]:
    """Rebuild the model from the config stored in a MoFlow checkpoint and load its weights.

    Returns the model (eval mode) and the checkpoint's identity (``meta``) merged with its ``extra``.
    """
    state = read_checkpoint(path)
    meta = state.get("meta", {})
    if meta.get("recipe") != "moflow" or "config" not in meta:
        raise CheckpointError(f"checkpoint {path} does not match this run: recipe: checkpoint has "
                              f"{meta.get('recipe')!r}, this run has 'moflow'")
    model = MoFlow(ModelConfig.from_dict(meta["config"]))
    load_checkpoint(path, model, expect={"recipe": "moflow"}, state=state)
    info = {**state.get("extra", {}), **meta, "atomic_nums": meta["atoms"]}
    return model.to(device).eval(), info


@torch.no_grad()
def sample_graphs(model: MoFlow, n: int, temperature: float, precision: Optional[Precision] = None,
                  generator: Optional[torch.Generator] = None, reverse=None):
    """Sample ``n`` molecules; returns (atom codes [n, N], bond codes [n, N, N]) numpy arrays."""
    z = model.sample_latent(n, temperature, generator=generator)
    reverse = reverse or model.reverse
    with precision.autocast() if precision is not None else contextlib.nullcontext():
        adj, x = reverse(z)
    with expected_sync("generated graphs to RDKit"):
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


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m moflow.generate", description=__doc__)
    add_common_args(p, kind="eval", batch_size=100, log_dir="results/moflow", data_dir="data/moflow",
                    benchmark_warmup=3, benchmark_steps=20,
                    dllogger_name="predict_log.json")
    g = p.add_argument_group("generation")
    g.add_argument("--num_samples", type=positive_int, default=100, help="molecules to generate")
    g.add_argument("--steps", type=positive_int, default=None,
                   help="NVIDIA's flag: generate this many batches (sets --num_samples, or --benchmark_steps "
                        "with --benchmark)")
    g.add_argument("--warmup_steps", dest="benchmark_warmup", type=non_negative_int,
                   help="NVIDIA's name of --benchmark_warmup")
    add_bool(g, "--allow_untrained", help="benchmark an untrained model of --preset when no checkpoint is given")
    g.add_argument("--preset", "--config_name", dest="preset", default="zinc250k",
                   help="architecture for --allow_untrained (a trained checkpoint carries its own)")
    g.add_argument("--temperature", type=non_negative_float, default=0.6, help="latent standard-deviation multiplier")
    add_bool(g, "--correct_validity", default=True,
             help="valency-correct molecules (false: write raw molecules only; invalid ones are dropped)")
    g.add_argument("--output", "--predictions_path", dest="output", default=None,
                   help=f"SMILES output file, *.smi (default: LOG_DIR/predictions_{SPLIT}.smi; '' to write none)")
    g.add_argument("--png", default=None, help=f"grid image (default: LOG_DIR/predictions_{SPLIT}.png; '' to skip)")
    g.add_argument("--png_molecules", type=positive_int, default=20, help="molecules drawn in the grid")
    p.add_check(check_data_dir)
    p.add_check(steps_to_samples)
    return p


def steps_to_samples(args, given, benchmark: bool = True) -> None:
    """NVIDIA's ``--steps`` (batches to generate), resolved while parsing: ``--num_samples`` =
    steps x batch size, or (``benchmark``) under ``--benchmark`` the timed steps."""
    if args.steps is None:
        return
    if benchmark and args.benchmark:
        args.benchmark_steps = args.steps
    else:
        args.num_samples = args.steps * args.batch_size


def check_data_dir(args, given) -> None:
    if "data_dir" in given:
        refuse_unused("--data_dir", "by moflow.generate / moflow.predict (sampling needs only the checkpoint)")


def make_reverse(model: MoFlow, args, precision: Precision):
    """The z -> graph function used for sampling: eager, compiled, or CUDA-graphed for full batches."""
    def reverse(z):
        with precision.autocast():
            return model.reverse(z)

    reverse = maybe_compile(reverse, args.compile)
    if not args.cuda_graphs:
        return reverse
    graphed = capture_inference(reverse, (model.sample_latent(args.batch_size, args.temperature),))

    def reverse_graphed(z):
        if z.shape[0] != args.batch_size:
            return reverse(z)
        return tuple(t.clone() for t in graphed(z))
    return reverse_graphed


def benchmark_inference(model, args, reverse, logger, device) -> dict:
    meter = PerformanceMeter(device, warmup_steps=args.benchmark_warmup)
    for _ in range(args.benchmark_warmup + args.benchmark_steps):
        meter.start()
        with torch.no_grad():
            reverse(model.sample_latent(args.batch_size, args.temperature))
        meter.stop(args.batch_size)
    return meter.log(logger, prefix="inference")


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    env = init_distributed(timeout_minutes=args.dist_timeout, gpu_affinity=args.gpu_affinity,
                           device=args.device)
    if args.cuda_graphs:
        require_cuda_graphs(env.device)
        if args.compile:
            raise ConfigError("--cuda_graphs with --compile is refused until a GPU run shows the pair correct")
    seed_everything(args.seed, env.rank)
    output = "" if args.output == "" or args.benchmark else prediction_path(args.output, args.log_dir, SPLIT, ("smi",))
    png = os.path.join(args.log_dir, f"predictions_{SPLIT}.png") if args.png is None else args.png
    check_output_locations(args.log_dir, output=output)
    checkpoint = checkpoint_to_load(args)
    if args.allow_untrained and not os.path.exists(checkpoint):
        if args.preset not in MODEL_PRESETS:
            raise ConfigError(f"unknown --preset {args.preset!r}; choose from {sorted(MODEL_PRESETS)}")
        model = MoFlow(make_model_config(args.preset)).to(env.device).eval()
        info = {"atomic_nums": ZINC_ATOMS if model.config.num_atom_channels == len(ZINC_ATOMS) + 1 else QM9_ATOMS}
    else:
        model, info = load_trained_model(checkpoint, env.device)
    precision = Precision(args.amp, env.device, args.amp_dtype)
    logger = logger_from_args(args, "moflow")
    logger.log_params(dict(vars(args)))
    reverse = make_reverse(model, args, precision)
    if args.benchmark:
        result = benchmark_inference(model, args, reverse, logger, env.device)
        logger.close()
        return result
    generator = torch.Generator(device=env.device).manual_seed(args.seed)
    raw, corrected = sample_smiles(model, args.num_samples, args.temperature, info["atomic_nums"],
                                   args.batch_size, None, generator, reverse=reverse)
    chosen = corrected if args.correct_validity else raw
    written = [s for s in chosen if s]
    if output:
        with atomic_write(output, "w", encoding="utf-8") as f:
            f.write("\n".join(written) + ("\n" if written else ""))
    result = {"num_samples": args.num_samples, "temperature": args.temperature, **sample_quality(raw, corrected),
              **evaluation_summary(checkpoint, None, len(written), model, env.world_size)}
    logger.log((), result)
    if png and written:
        draw_grid(written[:args.png_molecules], png)
        print(f"wrote {len(written)} molecules to {output or '(no file)'} and a grid to {png}")
    else:
        print(f"wrote {len(written)} molecules to {output or '(no file)'}")
    logger.close()
    return {**result, "output": output}


if __name__ == "__main__":
    sys.exit(run_main(main))
