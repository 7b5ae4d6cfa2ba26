"""Train MoFlow: ``python -m moflow.train --dataset qm9 --epochs 10``.

Single process or ``torchrun --nproc_per_node N -m moflow.train`` (DDP, gloo on CPU, NCCL on GPU).
The phases are :mod:`runtime.recipe`'s (parse -> config -> data -> model -> optimizer -> resume ->
loop -> finish) on a frozen :class:`TrainConfig`; the epoch/step loop, resume, limits, checkpoint
cadence and non-finite checks are runtime's (:mod:`runtime.loop`); this module holds MoFlow's step,
its evaluation and its checkpoint content.

- The architecture follows the dataset (its atom set and molecule size), so the config phase opens
  the preprocessed cache; the data phase splits it.

- The model is built under the rank-independent ``--seed``, and its ActNorm layers are initialised
  from the first *global* batch (every rank runs the same pass over the union of the ranks' first
  batches), so a multi-GPU run starts from exactly the model a single process would build.
- CUDA only: the bond and atom flows run on two streams (off under ``--compile``), and
  ``--cuda_graphs`` captures both flows after ``--cuda_graph_warmup`` eager steps.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch

from moflow.chem import sample_quality
from moflow.config import MODEL_PRESETS, ModelConfig, make_model_config
from moflow.data.dataset import GraphDataset, MoleculeCache
from moflow.generate import sample_smiles
from moflow.model import MoFlow, MoFlowObjective, initialize_actnorm
from runtime.callbacks import PerformanceMeter, peak_memory_mb
from runtime.checkpoint import check_mid_epoch_resume, config_differences, load_checkpoint, read_checkpoint, \
    save_checkpoint
from runtime.cli import ArgumentParser, add_bool, add_common_args, add_refused, checkpoint_to_save, device_type, \
    non_negative_float, non_negative_int, optimizer_betas, positive_int, resolve_num_workers
from runtime.compile import maybe_compile
from runtime.cuda_graphs import materialize_grads, require_cuda_graphs
from runtime.data import EpochSampler, ShardSampler, check_batch_size, make_loader
from runtime.devicecheck import expected_sync
from runtime.distributed import all_reduce_sum, is_main_process, wrap_ddp
from runtime.errors import CheckpointError, ConfigError, run_main
from runtime.loop import LoopConfig, Position, TrainLoop
from runtime.optim import make_optimizer
from runtime.precision import Precision
from runtime.recipe import Optimization, RecipeConfig, train_main
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


@dataclass(frozen=True, kw_only=True)
class TrainConfig(RecipeConfig):
    model_config: ModelConfig
    cache: MoleculeCache = field(repr=False, compare=False)   # the opened dataset the architecture follows


@dataclass
class TrainData:
    train_set: GraphDataset
    sampler: EpochSampler
    loader: Any


# ---- phases (runtime.recipe) ---------------------------------------------------------------------------
def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    check_flags(args)
    return args


def build_config(args, env) -> TrainConfig:
    """The architecture: a resumed checkpoint's (flags that disagree are refused), else the preset and
    flags sized to the dataset."""
    cache = MoleculeCache(args.data_dir, args.dataset)
    state = read_checkpoint(args.load_ckpt_path) if args.load_ckpt_path else None
    if state is not None and not args.finetune:
        config = resume_config(args, state, cache)
    else:
        config = model_config_from_args(args, cache)
    return TrainConfig(flags=args, recipe="moflow", run_name="moflow", save_path=checkpoint_to_save(args),
                       checkpoint=state, meta=meta_of(config, cache, args.dataset), model_config=config, cache=cache)


def load_data(config: TrainConfig, env) -> TrainData:
    flags = config.flags
    train_set = config.cache.subset("train")
    check_batch_size(flags.batch_size, len(train_set), env.world_size, "molecules")
    sampler = EpochSampler(len(train_set), shuffle=True, seed=flags.seed, num_replicas=env.world_size,
                           rank=env.rank, drop_last=True)  # full batches only (static shapes for CUDA graphs)
    loader = make_loader(train_set, flags.batch_size, sampler,
                         num_workers=resolve_num_workers(flags.num_workers, env.device), device=env.device,
                         drop_last=True)
    return TrainData(train_set=train_set, sampler=sampler, loader=loader)


def build_model(config: TrainConfig, data: TrainData, env) -> MoFlow:
    """A new run's model is initialised from the first global batch; a checkpoint's weights come in
    the resume phase. Either way every rank builds the same model (rank-independent seed)."""
    flags = config.flags
    if config.checkpoint is None:
        model = initialised_model(config.model_config, data.train_set, flags.seed, flags.batch_size,
                                  env.world_size, env.device)
    else:
        seed_everything(flags.seed)
        model = MoFlow(config.model_config).to(env.device)
    model.use_streams = env.device.type == "cuda" and flags.streams and not flags.compile
    return model


def build_optimizer(config: TrainConfig, model, env) -> Optimization:
    flags = config.flags
    optimizer = make_optimizer(flags.optimizer, model.parameters(), lr=flags.learning_rate,
                               weight_decay=flags.weight_decay, betas=optimizer_betas(flags))
    return Optimization(optimizer, None, Precision(flags.amp, env.device, flags.amp_dtype))


def resume(config: TrainConfig, model, optimization: Optimization, env) -> Position:
    """Resume: model, optimizer, loss scaler and position; ``--finetune``: the weights only, on a
    dataset with the same atom set."""
    path, position = config.flags.load_ckpt_path, Position()
    if config.checkpoint is not None:
        expect = {"recipe": "moflow", "atoms": config.meta["atoms"]}
        if config.resuming:
            expect.update(config=config.meta["config"], dataset=config.flags.dataset)
            info = load_checkpoint(path, model, optimization.optimizer, precision=optimization.precision,
                                   expect=expect, state=config.checkpoint)
            position = Position.from_dict(info["position"])
            check_mid_epoch_resume(path, config.checkpoint_extra, position, config.flags.batch_size,
                                   env.world_size)
        else:
            load_checkpoint(path, model, expect=expect, state=config.checkpoint)
    return position


def run_loop(config: TrainConfig, env, data: TrainData, model: MoFlow, optimization: Optimization,
             position: Position, logger) -> dict:
    flags, device, world = config.flags, env.device, env.world_size
    optimizer, precision, cache = optimization.optimizer, optimization.precision, config.cache
    seed_everything(flags.seed, env.rank)
    n_params = sum(p.numel() for p in model.parameters())
    logger.log_params({**vars(flags), "save_ckpt_path": config.save_path,
                       "model_config": config.model_config.to_dict(), "parameters": n_params,
                       "train_molecules": len(data.train_set), "world_size": world})
    if config.resuming:
        logger.log((), {"resumed_from": flags.load_ckpt_path, "epochs": position.epoch, "steps": position.step})
    ddp = wrap_ddp(MoFlowObjective(model))
    objective = maybe_compile(ddp, flags.compile)
    graphed = False
    accumulate = flags.accumulate_grad_batches

    def forward_backward(batch, scale: float, pos: Position):
        nonlocal graphed
        x, adj = (t.to(device, non_blocking=True) for t in batch)
        # the warm-up counts the optimizer steps of this run (a resumed run warms up again), not pos.step
        if flags.cuda_graphs and not graphed and pos.step - position.step >= flags.cuda_graph_warmup \
                and len(x) == flags.batch_size:
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
        norm = precision.step(optimizer, model.parameters(), clip_norm=flags.gradient_clip)
        keep_grads = graphed and accumulate > 1
        optimizer.zero_grad(set_to_none=not keep_grads)
        out = {"prior_ln_var": model.ln_var.detach().reshape(())}
        if norm is not None:
            out["grad_norm"] = norm
        return out

    def evaluate(epoch: int, scheduled: bool) -> Dict[str, float]:
        metrics = {}
        if flags.val_molecules > 0:
            metrics.update(validation_nll(model, cache, flags.val_molecules, flags.batch_size, device, precision))
        if flags.val_samples > 0 and is_main_process():
            metrics.update(sample_metrics(model, flags, cache.spec.atomic_nums, precision))
        return metrics

    def save(pos: Position) -> None:
        if config.save_path:
            save_checkpoint(config.save_path, model, optimizer, precision=precision, meta=config.meta,
                            position=pos.to_dict(),
                            extra={"data_dir": os.path.abspath(flags.data_dir), "batch_size": flags.batch_size,
                                   "replicas": world},
                            keep_last=flags.keep_last)

    meter = PerformanceMeter(device, warmup_steps=flags.benchmark_warmup) if flags.benchmark else None
    loop = TrainLoop(LoopConfig.from_args(flags, seed_rank=env.rank, replicas=world), data.loader, data.sampler,
                     logger, forward_backward=forward_backward, optimizer_step=optimizer_step,
                     batch_items=lambda b: len(b[0]), lr=lambda: optimizer.param_groups[0]["lr"],
                     evaluate=None if flags.benchmark else evaluate, save=save,
                     no_sync=getattr(ddp, "no_sync", None), meter=meter)
    result = loop.run(position)
    if flags.benchmark:
        logger.log((), {"peak_memory_mb": peak_memory_mb(device)})
    if flags.cuda_graphs and not graphed:
        logger.log((), {"stop_reason": f"{result['stop_reason']} (no CUDA graph was captured: no full batch of "
                                       f"{flags.batch_size} arrived after {flags.cuda_graph_warmup} warm-up steps)"})
    return result


# ---- helpers -------------------------------------------------------------------------------------------
def model_config_from_args(args, cache: MoleculeCache) -> ModelConfig:
    preset = args.preset or {"sample": "small"}.get(args.dataset, args.dataset)
    overrides = {k: getattr(args, k) for k in ARCH_FLAGS}
    overrides.update(max_nodes=cache.spec.max_nodes, num_atom_channels=cache.spec.num_atom_channels)
    if args.fixed_prior:
        overrides["learn_dist"] = False
    return make_model_config(preset, **overrides)


def check_flags(args) -> None:
    if args.cuda_graphs:
        require_cuda_graphs(device_type(args.device))
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


def main(argv: Optional[List[str]] = None) -> dict:
    return train_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
