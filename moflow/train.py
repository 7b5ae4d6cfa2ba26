"""Train MoFlow: ``python -m moflow.train --dataset qm9 --epochs 10``.

Single process or ``torchrun --nproc_per_node N -m moflow.train`` (DDP, gloo on CPU, NCCL on GPU).
The epoch/step loop, resume, limits, checkpoint cadence and non-finite checks are runtime's
(:mod:`runtime.loop`); this module holds MoFlow's step, its evaluation and its checkpoint content.

- The model is built under the rank-independent ``--seed``, and its ActNorm layers are initialised
  from the first *global* batch (every rank runs the same pass over the union of the ranks' first
  batches), so a multi-GPU run starts from exactly the model a single process would build.
- CUDA only: the bond and atom flows run on two streams (off under ``--compile``), and
  ``--cuda_graphs`` captures both flows after ``--cuda_graph_warmup`` eager steps.
"""
from __future__ import annotations

import os
import sys
from typing import Dict, Optional

import torch

from moflow.chem import sample_quality
from moflow.config import MODEL_PRESETS, ModelConfig, make_model_config
from moflow.data.dataset import MoleculeCache
from moflow.generate import sample_smiles
from moflow.model import MoFlow, MoFlowObjective, initialize_actnorm
from runtime.callbacks import PerformanceMeter, peak_memory_mb
from runtime.checkpoint import check_mid_epoch_resume, config_differences, load_checkpoint, read_checkpoint, \
    save_checkpoint
from runtime.cli import ArgumentParser, add_bool, add_common_args, add_refused, checkpoint_to_save, \
    non_negative_float, non_negative_int, optimizer_betas, positive_int, resolve_num_workers
from runtime.compile import maybe_compile
from runtime.cuda_graphs import materialize_grads, require_cuda_graphs
from runtime.data import EpochSampler, ShardSampler, check_batch_size, make_loader
from runtime.devicecheck import expected_sync
from runtime.distributed import all_reduce_sum, init_distributed, is_main_process, shutdown, wrap_ddp
from runtime.errors import CheckpointError, ConfigError, run_main
from runtime.io import check_output_locations
from runtime.logging import logger_from_args
from runtime.loop import LoopConfig, Position, TrainLoop
from runtime.optim import make_optimizer
from runtime.precision import Precision, set_tf32
from runtime.seed import seed_everything

DATASETS = ["sample", "moses", "zinc250k", "qm9"]
ARCH_FLAGS = ("b_n_flow", "b_n_block", "b_n_squeeze", "b_hidden_ch", "b_conv_lu", "a_n_flow", "a_n_block",
              "a_hidden_gnn", "a_hidden_lin", "mask_row_size", "mask_row_stride", "noise_scale")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m moflow.train", description=__doc__)
    add_common_args(p, batch_size=128, epochs=10, learning_rate=5e-4, gradient_clip=1.0, beta2=0.99,
                    data_dir="data/moflow", log_dir="results/moflow", benchmark_warmup=5,
                    benchmark_steps=20)
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default="sample", choices=DATASETS, help="name of the preprocessed cache in --data_dir")
    m = p.add_argument_group("model (defaults: the --preset)")
    m.add_argument("--preset", "--config_name", dest="preset", default=None, choices=sorted(MODEL_PRESETS),
                   help="hyper-parameter preset (default: the reference preset of --dataset; sample uses small)")
    m.add_argument("--b_n_flow", type=positive_int, default=None, help="Glow steps on the adjacency")
    m.add_argument("--b_n_block", type=positive_int, default=None, help="Glow blocks on the adjacency")
    m.add_argument("--b_n_squeeze", type=positive_int, default=None, help="squeeze fold of the adjacency")
    m.add_argument("--b_hidden_ch", type=positive_int, nargs="+", default=None, help="coupling conv widths")
    m.add_argument("--b_conv_lu", type=int, choices=[0, 1, 2], default=None,
                   help="0: 1x1 conv, 1: LU 1x1 conv, 2: none")
    m.add_argument("--a_n_flow", type=positive_int, default=None, help="graph coupling steps on atoms")
    m.add_argument("--a_n_block", type=positive_int, default=None, help="graph coupling blocks on atoms")
    m.add_argument("--a_hidden_gnn", type=positive_int, nargs="+", default=None, help="graph conv widths")
    m.add_argument("--a_hidden_lin", type=positive_int, nargs="+", default=None, help="coupling MLP widths")
    m.add_argument("--mask_row_size", type=positive_int, default=None, help="atom rows updated per coupling")
    m.add_argument("--mask_row_stride", type=positive_int, default=None, help="row stride between couplings")
    m.add_argument("--noise_scale", type=non_negative_float, default=None, help="dequantisation noise scale")
    add_bool(m, "--fixed_prior", help="do not learn the prior variance")
    e = p.add_argument_group("evaluation during training")
    e.add_argument("--val_samples", "--val_batch_size", dest="val_samples", type=non_negative_int, default=100,
                   help="molecules sampled at each evaluation (0: no sampling)")
    e.add_argument("--val_molecules", type=non_negative_int, default=1000,
                   help="validation molecules for val_loss at each evaluation (0: skip)")
    e.add_argument("--temperature", type=non_negative_float, default=0.6, help="sampling temperature for evaluation")
    g = p.add_argument_group("CUDA")
    g.add_argument("--cuda_graph_warmup", type=non_negative_int, default=20,
                   help="eager steps before CUDA graph capture")
    add_bool(g, "--streams", default=True, help="run the bond and atom flows on two CUDA streams (off under --compile)")
    add_refused(p, "--warmup_steps", "use --cuda_graph_warmup (eager steps before CUDA graph capture) and "
                                     "--benchmark_warmup (steps excluded from timing)")
    add_refused(p, "--allow_untrained", "it belongs to moflow.generate / moflow.predict")
    return p


def model_config_from_args(args, cache: MoleculeCache) -> ModelConfig:
    preset = args.preset or {"sample": "small"}.get(args.dataset, args.dataset)
    overrides = {k: getattr(args, k) for k in ARCH_FLAGS}
    overrides.update(max_nodes=cache.spec.max_nodes, num_atom_channels=cache.spec.num_atom_channels)
    if args.fixed_prior:
        overrides["learn_dist"] = False
    return make_model_config(preset, **overrides)


def check_flags(args, device) -> None:
    if args.cuda_graphs:
        require_cuda_graphs(device)
        if args.compile:
            raise ConfigError("--cuda_graphs with --compile is refused until a GPU run shows the pair correct; "
                              "use one of them")


def meta_of(config: ModelConfig, cache: MoleculeCache, dataset: str) -> Dict:
    """What a MoFlow checkpoint is; a resumed run must match it."""
    return {"recipe": "moflow", "model": "moflow", "config": config.to_dict(), "dataset": dataset,
            "atoms": list(cache.spec.atomic_nums)}


def resume_config(args, state: Dict, cache: MoleculeCache) -> ModelConfig:
    """The checkpoint's architecture; explicit architecture flags that disagree with it are refused."""
    meta = state.get("meta", {})
    if meta.get("recipe") != "moflow":
        raise CheckpointError(f"checkpoint {args.load_ckpt_path} does not match this run: recipe: checkpoint has "
                              f"{meta.get('recipe')!r}, this run has 'moflow'")
    config = ModelConfig.from_dict(meta["config"])
    asked = {k: getattr(args, k) for k in ARCH_FLAGS if getattr(args, k) is not None}
    if args.preset:
        asked = {**MODEL_PRESETS[args.preset], **asked}
        asked.pop("max_nodes", None)
        asked.pop("num_atom_channels", None)
    differ = config_differences({k: getattr(config, k) for k in asked}, asked, keys=list(asked))
    if differ:
        raise CheckpointError(f"checkpoint {args.load_ckpt_path} does not match this run: " + "; ".join(differ))
    return config


def graph_flows_for_cuda(model: MoFlow, adj: torch.Tensor, x: torch.Tensor) -> None:
    """Replace both flows by CUDA-graphed callables (static shapes: drop_last batches)."""
    x_in = model.dequantize(x)
    adj_in = model.dequantize(adj)
    torch.cuda.synchronize()
    model.atom_flow = torch.cuda.make_graphed_callables(model.atom_flow, (adj, x_in))
    model.bond_flow = torch.cuda.make_graphed_callables(model.bond_flow, (adj_in,))
    torch.cuda.synchronize()


def first_global_batch(dataset, seed: int, batch_size: int, world: int):
    """The union of every rank's first epoch-0 batch, in the order a single process reads it: rank r
    reads ``perm[r::world]``, so the ranks' first batches together are ``perm[:batch_size * world]``."""
    order = EpochSampler(len(dataset), shuffle=True, seed=seed).indices(0)
    items = [dataset[i] for i in order[:batch_size * world].tolist()]
    return torch.stack([it[0] for it in items]), torch.stack([it[1] for it in items])


def initialised_model(config: ModelConfig, dataset, seed: int, batch_size: int, world: int, device) -> MoFlow:
    """The model every rank starts from: built under ``seed`` (not ``seed + rank``), ActNorm initialised
    by one pass over the first global batch, so it equals the single-process model with batch
    ``batch_size * world``."""
    seed_everything(seed)
    model = MoFlow(config).to(device)
    x0, adj0 = first_global_batch(dataset, seed, batch_size, world)
    n_init = initialize_actnorm(model, adj0.to(device), x0.to(device))
    if is_main_process():
        print(f"initialised {n_init} ActNorm layers from the first global batch of {len(x0)} molecules", flush=True)
    return model


@torch.no_grad()
def validation_nll(model: MoFlow, cache: MoleculeCache, n: int, batch_size: int, device, precision) -> Dict[str, float]:
    """Mean NLL (bits/dim) of the first ``n`` validation molecules, each evaluated exactly once over all ranks."""
    from runtime.distributed import get_rank, get_world_size

    data = cache.subset("valid")
    n = min(n, len(data))
    if n == 0:
        return {}
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    count = 0                                                   # molecules, known on the host
    shard = ShardSampler(n, get_world_size(), get_rank())
    loader = make_loader(data, batch_size, shard, device=device)
    for x, adj in loader:
        x, adj = x.to(device, non_blocking=True), adj.to(device, non_blocking=True)
        with precision.autocast():
            nll_x, nll_adj = model.nll(*model(adj, x, dequantize=True), reduce=False)
        sums += torch.stack([(nll_x + nll_adj).sum(), nll_x.sum(), nll_adj.sum()]).double()
        count += len(x)
    model.train(was_training)
    with expected_sync("evaluation result"):
        sums = torch.cat([sums, torch.tensor([float(count)], dtype=torch.float64, device=device)])
        loss, nll_x, nll_adj, count = all_reduce_sum(sums).tolist()
    return {"val_loss": loss / count, "val_nll_x": nll_x / count, "val_nll_adj": nll_adj / count}


def sample_metrics(model: MoFlow, args, atomic_nums, precision) -> Dict[str, float]:
    was_training = model.training
    model.eval()
    raw, corrected = sample_smiles(model, args.val_samples, args.temperature, atomic_nums,
                                   batch_size=args.val_samples, precision=precision)
    model.train(was_training)
    return sample_quality(raw, corrected)


def train(args) -> dict:
    """Run training as configured by ``args``; returns the loop's summary, with the trained
    (unwrapped) model under ``"model"``."""
    env = init_distributed(timeout_minutes=args.dist_timeout, gpu_affinity=args.gpu_affinity,
                           device=args.device)
    device = env.device
    check_flags(args, device)
    if args.tf32 is not None:
        set_tf32(args.tf32)
    save_path = checkpoint_to_save(args)
    if is_main_process():
        check_output_locations(args.log_dir, save_path)

    cache = MoleculeCache(args.data_dir, args.dataset)
    state = read_checkpoint(args.load_ckpt_path) if args.load_ckpt_path else None
    resuming = state is not None and not args.finetune
    if resuming:
        config = resume_config(args, state, cache)
    else:
        config = model_config_from_args(args, cache)
    meta = meta_of(config, cache, args.dataset)

    train_set = cache.subset("train")
    world = env.world_size
    check_batch_size(args.batch_size, len(train_set), world, "molecules")
    if state is None:
        model = initialised_model(config, train_set, args.seed, args.batch_size, world, device)
    else:
        seed_everything(args.seed)  # rank-independent: every rank builds the same model
        model = MoFlow(config).to(device)
    sampler = EpochSampler(len(train_set), shuffle=True, seed=args.seed, num_replicas=world, rank=env.rank,
                           drop_last=True)  # full batches only (static shapes for CUDA graphs)
    loader = make_loader(train_set, args.batch_size, sampler, num_workers=resolve_num_workers(args.num_workers, device),
                         device=device, drop_last=True)
    optimizer = make_optimizer(args.optimizer, model.parameters(), lr=args.learning_rate,
                               weight_decay=args.weight_decay, betas=optimizer_betas(args))
    precision = Precision(args.amp, device, args.amp_dtype)
    position = Position()
    if state is not None:
        expect = {"recipe": "moflow", "atoms": meta["atoms"]}
        if resuming:
            expect.update(config=meta["config"], dataset=args.dataset)
            info = load_checkpoint(args.load_ckpt_path, model, optimizer, precision=precision, expect=expect,
                                   state=state)
            position = Position.from_dict(info["position"])
            check_mid_epoch_resume(args.load_ckpt_path, state.get("extra", {}), position, args.batch_size, world)
        else:  # --finetune: the weights only, on a dataset with the same atom set
            load_checkpoint(args.load_ckpt_path, model, expect=expect, state=state)
    seed_everything(args.seed, env.rank)

    logger = logger_from_args(args, "moflow", run_name="moflow", append=resuming)
    try:
        result = _run(args, env, cache, config, meta, model, optimizer, precision, loader, sampler, position,
                      resuming, save_path, len(train_set), logger)
    finally:
        logger.close()
        shutdown()
    return {**result, "model": model}


def _run(args, env, cache, config, meta, model, optimizer, precision, loader, sampler, position, resuming,
         save_path, train_size, logger) -> dict:
    device, world = env.device, env.world_size
    n_params = sum(p.numel() for p in model.parameters())
    logger.log_params({**vars(args), "save_ckpt_path": save_path, "model_config": config.to_dict(),
                       "parameters": n_params, "train_molecules": train_size, "world_size": world})
    if resuming:
        logger.log((), {"resumed_from": args.load_ckpt_path, "epochs": position.epoch, "steps": position.step})
    model.use_streams = device.type == "cuda" and args.streams and not args.compile
    ddp = wrap_ddp(MoFlowObjective(model))
    objective = maybe_compile(ddp, args.compile)
    graphed = False
    accumulate = args.accumulate_grad_batches

    def forward_backward(batch, scale: float, pos: Position):
        nonlocal graphed
        x, adj = (t.to(device, non_blocking=True) for t in batch)
        # the warm-up counts the optimizer steps of this run (a resumed run warms up again), not pos.step
        if args.cuda_graphs and not graphed and pos.step - position.step >= args.cuda_graph_warmup \
                and len(x) == args.batch_size:
            with precision.autocast(cache_enabled=False):
                graph_flows_for_cuda(model, adj, x)
            graphed = True
            if accumulate > 1:  # graphed backward returns views of static buffers: never let p.grad alias one
                materialize_grads(model.parameters())
        with precision.autocast(cache_enabled=not graphed):  # graphed callables need the cache off
            loss, nll_x, nll_adj = objective(adj, x)
        precision.backward(loss * scale)
        return {"loss": loss.detach(), "nll_x": nll_x, "nll_adj": nll_adj}

    def optimizer_step(pos: Position):
        norm = precision.step(optimizer, model.parameters(), clip_norm=args.gradient_clip)
        keep_grads = graphed and accumulate > 1
        optimizer.zero_grad(set_to_none=not keep_grads)
        out = {"prior_ln_var": model.ln_var.detach().reshape(())}
        if norm is not None:
            out["grad_norm"] = norm
        return out

    def evaluate(epoch: int, scheduled: bool) -> Dict[str, float]:
        metrics = {}
        if args.val_molecules > 0:
            metrics.update(validation_nll(model, cache, args.val_molecules, args.batch_size, device, precision))
        if args.val_samples > 0 and is_main_process():
            metrics.update(sample_metrics(model, args, cache.spec.atomic_nums, precision))
        return metrics

    def save(pos: Position) -> None:
        if save_path:
            save_checkpoint(save_path, model, optimizer, precision=precision, meta=meta, position=pos.to_dict(),
                            extra={"data_dir": os.path.abspath(args.data_dir), "batch_size": args.batch_size,
                                   "replicas": world},
                            keep_last=args.keep_last)

    meter = PerformanceMeter(device, warmup_steps=args.benchmark_warmup) if args.benchmark else None
    loop = TrainLoop(LoopConfig.from_args(args, seed_rank=env.rank, replicas=world), loader, sampler, logger,
                     forward_backward=forward_backward, optimizer_step=optimizer_step, batch_items=lambda b: len(b[0]),
                     lr=lambda: optimizer.param_groups[0]["lr"], evaluate=None if args.benchmark else evaluate,
                     save=save, no_sync=getattr(ddp, "no_sync", None), meter=meter)
    result = loop.run(position)
    if args.benchmark:
        logger.log((), {"peak_memory_mb": peak_memory_mb(device)})
    if args.cuda_graphs and not graphed:
        logger.log((), {"stop_reason": f"{result['stop_reason']} (no CUDA graph was captured: no full batch of "
                                       f"{args.batch_size} arrived after {args.cuda_graph_warmup} warm-up steps)"})
    return result


def main(argv: Optional[list] = None) -> dict:
    result = train(build_parser().parse_args(argv))
    result.pop("model")
    return result


if __name__ == "__main__":
    sys.exit(run_main(main))
