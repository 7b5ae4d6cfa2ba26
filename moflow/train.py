"""Train MoFlow: ``python -m moflow.train --dataset sample --config small --epochs 1``.

Single process or ``torchrun --nproc_per_node N -m moflow.train`` (DDP, gloo on CPU, NCCL on GPU).
ActNorm layers are initialised from the first batch before training; checkpoints hold the model
(including the learned prior variance), optimizer, loss scaler and RNG states and resume exactly.
"""
import argparse
import os
import sys
import time

import torch
from torch.utils.data import DataLoader

from moflow.config import MODEL_PRESETS, make_model_config
from moflow.data.dataset import MoleculeCache
from moflow.generate import sample_smiles
from moflow.model import MoFlow, MoFlowObjective, initialize_actnorm
from runtime.callbacks import PerformanceMeter
from runtime.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from runtime.cli import add_common_args
from runtime.compile import maybe_compile
from runtime.cuda_graphs import require_cuda_graphs
from runtime.distributed import (all_reduce_mean, barrier, init_distributed, is_main_process, make_sampler,
                                 shutdown, wrap_ddp)
from runtime.logging import setup_logger
from runtime.optim import make_optimizer
from runtime.precision import Precision, set_tf32
from runtime.progress import progress
from runtime.seed import seed_everything


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(p, batch_size=128, epochs=10, learning_rate=5e-4, gradient_clip=1.0, data_dir="data/moflow",
                    log_dir="results/moflow", save_ckpt_path="results/moflow/moflow.pt", log_every=20,
                    benchmark_warmup=5, benchmark_steps=20)
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default="sample", choices=["sample", "moses", "zinc250k", "qm9"],
                   help="name of the preprocessed cache in --data_dir")
    m = p.add_argument_group("model (defaults: the --config preset)")
    m.add_argument("--config", default=None, choices=sorted(MODEL_PRESETS),
                   help="hyper-parameter preset (default: the reference preset of --dataset; sample uses small)")
    m.add_argument("--b_n_flow", type=int, default=None, help="Glow steps on the adjacency")
    m.add_argument("--b_n_block", type=int, default=None)
    m.add_argument("--b_n_squeeze", type=int, default=None, help="squeeze fold of the adjacency")
    m.add_argument("--b_hidden_ch", type=int, nargs="+", default=None, help="coupling conv widths")
    m.add_argument("--b_conv_lu", type=int, choices=[0, 1, 2], default=None,
                   help="0: 1x1 conv, 1: LU 1x1 conv, 2: none")
    m.add_argument("--a_n_flow", type=int, default=None, help="graph coupling steps on atoms")
    m.add_argument("--a_n_block", type=int, default=None)
    m.add_argument("--a_hidden_gnn", type=int, nargs="+", default=None)
    m.add_argument("--a_hidden_lin", type=int, nargs="+", default=None)
    m.add_argument("--mask_row_size", type=int, default=None)
    m.add_argument("--mask_row_stride", type=int, default=None)
    m.add_argument("--noise_scale", type=float, default=None, help="dequantisation noise scale")
    m.add_argument("--fixed_prior", action="store_true", help="do not learn the prior variance")
    t = p.add_argument_group("MoFlow training")
    t.add_argument("--beta1", type=float, default=0.9)
    t.add_argument("--beta2", type=float, default=0.99)
    t.add_argument("--max_steps", type=int, default=None, help="stop after this many training batches")
    t.add_argument("--max_minutes", type=float, default=None, help="stop (and save) after this wall time")
    t.add_argument("--val_samples", type=int, default=100, help="molecules sampled at each evaluation")
    t.add_argument("--temperature", type=float, default=0.6, help="sampling temperature for evaluation")
    t.add_argument("--cuda_graph_warmup", type=int, default=20, help="eager steps before CUDA graph capture")
    t.add_argument("--no_streams", action="store_true", help="CUDA: run bond and atom flows on one stream")
    return p


def model_config_from_args(args, cache: MoleculeCache):
    preset = args.config or {"sample": "small"}.get(args.dataset, args.dataset)
    overrides = {k: getattr(args, k) for k in (
        "b_n_flow", "b_n_block", "b_n_squeeze", "b_hidden_ch", "b_conv_lu", "a_n_flow", "a_n_block",
        "a_hidden_gnn", "a_hidden_lin", "mask_row_size", "mask_row_stride", "noise_scale")}
    overrides.update(max_nodes=cache.spec.max_nodes, num_atom_channels=cache.spec.num_atom_channels)
    if args.fixed_prior:
        overrides["learn_dist"] = False
    return make_model_config(preset, **overrides)


def graph_flows_for_cuda(model: MoFlow, adj: torch.Tensor, x: torch.Tensor) -> None:
    """Replace both flows by CUDA-graphed callables (static shapes: drop_last batches)."""
    x_in = model.dequantize(x)
    adj_in = model.dequantize(adj)
    if model.channels_last:
        adj_in = adj_in.contiguous(memory_format=torch.channels_last)
    torch.cuda.synchronize()
    model.atom_flow = torch.cuda.make_graphed_callables(model.atom_flow, (adj, x_in))
    model.bond_flow = torch.cuda.make_graphed_callables(model.bond_flow, (adj_in,))
    torch.cuda.synchronize()


def evaluate_samples(model: MoFlow, args, atomic_nums, precision) -> dict:
    model.eval()
    raw, corrected = sample_smiles(model, args.val_samples, args.temperature, atomic_nums,
                                   batch_size=args.val_samples, precision=precision)
    model.train()
    valid = [s for s in raw if s]
    return {"valid_without_correction": 100.0 * len(valid) / len(raw),
            "unique_without_correction": 100.0 * len(set(valid)) / max(len(valid), 1),
            "valid": 100.0 * sum(s is not None for s in corrected) / len(corrected)}


def train(args: argparse.Namespace) -> MoFlow:
    """Run training as configured by ``args``; returns the trained (unwrapped) model."""
    env = init_distributed()
    device = env.device
    if args.cuda_graphs:
        require_cuda_graphs(device)
    set_tf32(args.tf32)
    seed_everything(args.seed, env.rank)
    logger = setup_logger(args.log_dir, wandb=args.wandb, wandb_project=args.wandb_project,
                          tensorboard=args.tensorboard, silent=args.silent, run_name="moflow")

    cache = MoleculeCache(args.data_dir, args.dataset)
    resume = read_checkpoint(args.load_ckpt_path) if args.load_ckpt_path else None
    if resume is not None:  # the checkpoint's architecture wins over command-line defaults
        from moflow.config import ModelConfig
        config = ModelConfig.from_dict(resume["extra"]["model_config"])
        if resume["extra"].get("atomic_nums") != cache.spec.atomic_nums or config.max_nodes != cache.spec.max_nodes:
            raise ValueError(f"checkpoint {args.load_ckpt_path} was trained on another atom set / node count "
                             f"than {args.dataset} in {args.data_dir}")
    else:
        config = model_config_from_args(args, cache)
    model = MoFlow(config).to(device)
    model.channels_last = device.type == "cuda"
    train_set = cache.subset("train")
    world = env.world_size
    drop_last = len(train_set) >= args.batch_size * world
    sampler = make_sampler(train_set, shuffle=True, seed=args.seed, drop_last=drop_last)
    shuffle_rng = torch.Generator()
    loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=sampler is None, sampler=sampler,
                        num_workers=args.num_workers, drop_last=drop_last, pin_memory=device.type == "cuda",
                        generator=shuffle_rng)

    optimizer = make_optimizer(args.optimizer, model.parameters(), lr=args.learning_rate,
                               weight_decay=args.weight_decay, betas=(args.beta1, args.beta2))
    precision = Precision(args.amp, device, args.amp_dtype)
    epoch, step = 0, 0
    if resume is not None:
        state = load_checkpoint(args.load_ckpt_path, model, optimizer, precision=precision, map_location=device,
                                restore_rng=True)
        epoch, step = state["epoch"], state["step"]
    else:
        x0, adj0 = next(iter(loader))
        n_init = initialize_actnorm(model, adj0.to(device), x0.to(device), reduce_mean=all_reduce_mean)
        if is_main_process():
            print(f"initialised {n_init} ActNorm layers from a batch of {len(x0)} molecules")

    n_params = sum(p.numel() for p in model.parameters())
    logger.log_params({**vars(args), "model_config": config.to_dict(), "parameters": n_params,
                       "train_molecules": len(train_set), "world_size": world})
    for name, unit in (("loss", None), ("nll_x", None), ("nll_adj", None)):
        logger.log_metadata(name, {"unit": unit, "format": ":.4f"})
    model.use_streams = device.type == "cuda" and not args.no_streams
    objective = maybe_compile(wrap_ddp(MoFlowObjective(model)), args.compile)
    meter = PerformanceMeter(device, warmup_steps=args.benchmark_warmup if args.benchmark else 5)
    max_steps = args.max_steps
    if args.benchmark:
        max_steps = step + args.benchmark_warmup + args.benchmark_steps
    start_time = time.time()

    graphed = False
    stop = False
    batches_seen = 0  # optimizer steps happen every --accumulate_grad_batches batches
    model.train()
    while (epoch < args.epochs or args.benchmark) and not stop:
        if sampler is not None:
            sampler.set_epoch(epoch)
        shuffle_rng.manual_seed(args.seed * 100003 + epoch)  # same order whether resumed or not
        for x, adj in progress(loader, desc=f"epoch {epoch}", silent=args.silent):
            x, adj = x.to(device, non_blocking=True), adj.to(device, non_blocking=True)
            if args.cuda_graphs and not graphed and step >= args.cuda_graph_warmup and len(x) == args.batch_size:
                barrier()
                with precision.autocast(cache_enabled=False):
                    graph_flows_for_cuda(model, adj, x)
                graphed = True
            meter.start()
            with precision.autocast(cache_enabled=not graphed):  # graphed callables need the autocast cache off
                loss, nll_x, nll_adj = objective(adj, x)
            # checking every step would synchronise CUDA each step; there, check at logging steps
            if (device.type == "cpu" or (step + 1) % args.log_every == 0) and not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss.item()} at step {step} (epoch {epoch}); "
                                         "lower --learning_rate or check the data")
            accumulate = args.accumulate_grad_batches
            precision.backward(loss / accumulate if accumulate > 1 else loss)
            batches_seen += 1
            if batches_seen % accumulate == 0:
                precision.step(optimizer, model.parameters(), clip_norm=args.gradient_clip)
                optimizer.zero_grad(set_to_none=True)
            meter.stop(len(x) * world)
            step += 1
            if step % args.log_every == 0:
                stats = torch.stack([loss.detach().float(), nll_x.float(), nll_adj.float()])
                stats = all_reduce_mean(stats).tolist()
                logger.log((epoch, step), {"loss": stats[0], "nll_x": stats[1], "nll_adj": stats[2],
                                           "ln_var": model.ln_var.item()})
            out_of_time = args.max_minutes is not None and (time.time() - start_time) / 60 > args.max_minutes
            if (max_steps is not None and step >= max_steps) or out_of_time:
                stop = True
                break
        if not stop:
            epoch += 1
        if args.benchmark:
            continue
        finished = stop or epoch >= args.epochs
        if is_main_process() and args.eval_interval > 0 and (epoch % args.eval_interval == 0 or finished) \
                and args.val_samples > 0:
            logger.log((epoch,), evaluate_samples(model, args, cache.spec.atomic_nums, precision))
        if args.save_ckpt_path and ((args.ckpt_interval > 0 and epoch % args.ckpt_interval == 0) or finished):
            save_checkpoint(args.save_ckpt_path, model, optimizer, precision=precision, epoch=epoch, step=step,
                            extra={"model_config": config.to_dict(), "atomic_nums": cache.spec.atomic_nums,
                                   "dataset": args.dataset, "data_dir": os.path.abspath(args.data_dir)},
                            keep_last=args.keep_last)
            barrier()
    meter.log(logger, prefix="train")
    logger.log((), {"epochs": epoch, "steps": step, "minutes": (time.time() - start_time) / 60})
    logger.close()
    shutdown()
    return model


def main(argv=None) -> int:
    train(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
