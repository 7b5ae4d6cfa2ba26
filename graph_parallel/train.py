"""Train DimeNet++ / GemNet-T / GemNet-dT on OC20-style S2EF data with data x graph parallelism.

    torchrun --nproc_per_node 2 -m graph_parallel.train --model dimenetpp --preset small --gp_size 2

``--gp_size`` consecutive ranks share each batch and split its graph; the world size divided by
``--gp_size`` is the data-parallel size. Without torchrun this is a single process. The default
data is the small EMT-generated set embedded in the package (graph_parallel/data/emt_small).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, Optional

import torch
import torch.distributed as dist
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, RandomSampler

from runtime.callbacks import PerformanceMeter, peak_memory_mb
from runtime.checkpoint import load_checkpoint, save_checkpoint
from runtime.cli import add_common_args
from runtime.cuda_graphs import require_cuda_graphs
from runtime.distributed import ProcessGrid, init_distributed, is_main_process, make_sampler, shutdown
from runtime.logging import setup_logger
from runtime.optim import make_optimizer, make_scheduler
from runtime.precision import Precision, set_tf32
from runtime.progress import progress
from runtime.seed import seed_everything

from .data import EMBEDDED_DATA_DIR, Collater, LmdbDataset
from .losses import Normalizer, s2ef_error_sums, s2ef_loss, s2ef_metrics
from .models import MODELS, build_model, count_parameters, fit_scale_factors, predict
from .parallel import partition_graph, sync_gradients


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(parser, batch_size=4, epochs=5, learning_rate=5e-4, optimizer="adamw", gradient_clip=10.0,
                    data_dir=str(EMBEDDED_DATA_DIR), log_dir="results/graph_parallel", keep_last=2,
                    log_every=10)
    g = parser.add_argument_group("graph parallel model")
    g.add_argument("--model", choices=sorted(MODELS), default="dimenetpp", help="network")
    g.add_argument("--preset", default="base", help="model size preset (small, base, large, xl; see README)")
    g.add_argument("--gp_size", type=int, default=1, help="ranks that split one graph (must divide world size)")
    g.add_argument("--cutoff", type=float, default=6.0, help="radius graph cutoff in Angstrom")
    g.add_argument("--max_neighbors", type=int, default=50, help="nearest neighbours kept per atom")
    g.add_argument("--train_path", default=None, help="train LMDB file/dir (default: DATA_DIR/train.lmdb)")
    g.add_argument("--val_path", default=None, help="validation LMDB file/dir (default: DATA_DIR/val.lmdb)")
    g.add_argument("--energy_coef", type=float, default=1.0, help="weight of the energy MAE loss")
    g.add_argument("--force_coef", type=float, default=50.0, help="weight of the force L2MAE loss (0: energy only)")
    g.add_argument("--scheduler", choices=("plateau", "step"), default="plateau",
                   help="after warm-up: ReduceLROnPlateau on the val loss, or step decay")
    g.add_argument("--warmup_steps", type=int, default=100, help="linear learning-rate warm-up steps")
    g.add_argument("--lr_patience", type=int, default=3, help="plateau: evaluations without improvement")
    g.add_argument("--lr_factor", type=float, default=0.8, help="plateau: learning-rate factor")
    g.add_argument("--lr_step_size", type=int, default=1000, help="step: decay every N optimizer steps")
    g.add_argument("--lr_gamma", type=float, default=0.1, help="step: decay factor")
    g.add_argument("--ema_decay", type=float, default=0.999, help="EMA of weights for evaluation (0: off)")
    g.add_argument("--max_steps", type=int, default=None, help="stop training after N optimizer steps")
    g.add_argument("--evaluate", action="store_true", help="only evaluate --load_ckpt_path on the val set")
    g.add_argument("--fit_scale_batches", type=int, default=4,
                   help="GemNet: training batches used to fit the scaling factors at the start (0: keep 1.0)")
    return parser


def split_path(args, name: str) -> Path:
    explicit = getattr(args, f"{name}_path")
    if explicit:
        return Path(explicit)
    base = Path(args.data_dir)
    return base / f"{name}.lmdb" if (base / f"{name}.lmdb").exists() else base / name


def energy_normalizer(dataset: LmdbDataset, limit: int = 5000) -> Normalizer:
    step = max(1, len(dataset) // limit)
    energies = torch.tensor([dataset.raw(i)["energy"] for i in range(0, len(dataset), step)], dtype=torch.float64)
    return Normalizer.fit(energies)


def make_loader(dataset, args, grid: ProcessGrid, train: bool) -> DataLoader:
    """Batches per data-parallel group: every rank of a gp group sees the same batches."""
    symmetric = MODELS[args.model][0].symmetric_graph
    sampler = make_sampler(dataset, shuffle=train, seed=args.seed, num_replicas=grid.dp_size, rank=grid.dp_rank)
    if sampler is None and train:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(args.seed))
    return DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, shuffle=False,
                      collate_fn=Collater(args.cutoff, args.max_neighbors, symmetric), num_workers=args.num_workers)


def set_epoch(loader: DataLoader, epoch: int, seed: int) -> None:
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    elif isinstance(loader.sampler, RandomSampler):
        loader.sampler.generator.manual_seed(seed + epoch)


def ema_update(decay: float):
    """EMA step with the usual warm-up: decay_n = min(decay, (1 + n) / (10 + n)) after n updates,
    so short runs are not dominated by the initial weights."""
    def update(averaged, current, num_averaged):
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        return d * averaged + (1.0 - d) * current
    return update


class Trainer:
    def __init__(self, args, grid: ProcessGrid, device: torch.device, logger, normalizer: Normalizer):
        self.args, self.grid, self.device, self.logger, self.norm = args, grid, device, logger, normalizer
        torch.manual_seed(args.seed)                          # identical initial weights on every rank
        self.model = build_model(args.model, args.preset, cutoff=args.cutoff).to(device)
        seed_everything(args.seed, grid.dp_rank)                 # gp ranks of one group share a stream
        self._micro_batches = 0
        self.precision = Precision(args.amp, device, args.amp_dtype)
        self.optimizer = make_optimizer(args.optimizer, self.model.parameters(), args.learning_rate,
                                        weight_decay=args.weight_decay)
        self.scheduler = make_scheduler(args.scheduler, self.optimizer, warmup_steps=args.warmup_steps,
                                        step_size=args.lr_step_size, gamma=args.lr_gamma,
                                        patience=args.lr_patience, factor=args.lr_factor)
        self.ema = AveragedModel(self.model, avg_fn=ema_update(args.ema_decay)) if args.ema_decay > 0 else None
        self.step = 0
        self.epoch = 0

    # -- one batch ---------------------------------------------------------------------------
    def forward(self, model, batch, create_graph: bool):
        part = partition_graph(batch.edge_index, batch.cell_offsets, batch.num_atoms, self.grid.gp_rank,
                               self.grid.gp_size, self.model.triplet_kind).to(self.device)
        with self.precision.autocast():
            energy, forces = predict(model, batch, part, self.grid.gp_group,
                                     compute_forces=self.args.force_coef > 0 or not create_graph,
                                     create_graph=create_graph)
        return energy.float(), (forces.float() if forces is not None else None)

    def train_step(self, batch) -> Dict[str, float]:
        args = self.args
        batch = batch.to(self.device)
        energy, forces = self.forward(self.model, batch, create_graph=True)
        loss, value = s2ef_loss(energy, forces, batch, self.norm, args.energy_coef, args.force_coef,
                                self.grid.dp_group)
        self.precision.backward(loss / args.accumulate_grad_batches)
        self._micro_batches += 1
        out = {"train_loss": value.item()}
        if self._micro_batches % args.accumulate_grad_batches == 0:
            sync_gradients(self.model.parameters())
            norm = self.precision.step(self.optimizer, self.model.parameters(), clip_norm=args.gradient_clip)
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            self.step += 1
            out["stepped"] = 1.0
            if norm is not None:
                out["grad_norm"] = float(norm)
        return out

    # -- evaluation ------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, loader) -> Dict[str, float]:
        model = self.ema.module if self.ema is not None else self.model
        model.eval()
        sums = torch.zeros(6, dtype=torch.float64)
        loss_sum, batches = 0.0, 0
        for batch in loader:
            batch = batch.to(self.device)
            energy, forces = self.forward(model, batch, create_graph=False)
            _, value = s2ef_loss(energy, forces if self.args.force_coef > 0 else None, batch, self.norm,
                                 self.args.energy_coef, self.args.force_coef)
            loss_sum += value.item()
            batches += 1
            sums += s2ef_error_sums(energy, forces, batch, self.norm).cpu()
        model.train()
        totals = torch.tensor([loss_sum, batches], dtype=torch.float64)
        if self.grid.dp_group is not None and self.grid.dp_size > 1:
            dist.all_reduce(sums, group=self.grid.dp_group)
            dist.all_reduce(totals, group=self.grid.dp_group)
        metrics = s2ef_metrics(sums)
        metrics["loss"] = float(totals[0] / max(totals[1], 1))
        return metrics

    # -- checkpoints -------------------------------------------------------------------------
    def save(self, path: str) -> None:
        extra = {"normalizer": self.norm.state_dict(), "model_name": self.args.model, "preset": self.args.preset,
                 "config": self.model.config_dict(), "cutoff": self.args.cutoff,
                 "max_neighbors": self.args.max_neighbors,
                 "ema": self.ema.state_dict() if self.ema is not None else None}
        save_checkpoint(path, self.model, self.optimizer, self.scheduler, self.precision, epoch=self.epoch,
                        step=self.step, extra=extra, keep_last=self.args.keep_last)

    def load(self, path: str, resume: bool) -> None:
        states = (self.optimizer, self.scheduler, self.precision) if resume else (None, None, None)
        info = load_checkpoint(path, self.model, *states, restore_rng=resume)
        extra = info["extra"]
        if extra.get("model_name") not in (None, self.args.model):
            raise ValueError(f"checkpoint {path} holds a {extra['model_name']} model, not {self.args.model}")
        if self.ema is not None and extra.get("ema"):
            self.ema.load_state_dict(extra["ema"])
        self.norm = Normalizer(**extra["normalizer"]) if extra.get("normalizer") else self.norm
        self.epoch, self.step = info["epoch"] + (1 if resume else 0), info["step"]


def benchmark(trainer: Trainer, loader, args, logger) -> Dict[str, float]:
    """Timed training steps: structures/s of the whole job and peak memory of every rank."""
    meter = PerformanceMeter(trainer.device, warmup_steps=args.benchmark_warmup)
    rss_before = peak_memory_mb(trainer.device)
    done, epoch = 0, 0
    total = args.benchmark_warmup + args.benchmark_steps
    while done < total:
        set_epoch(loader, epoch, args.seed)
        for batch in loader:
            meter.start()
            trainer.train_step(batch)
            meter.stop(batch.num_structures * trainer.grid.dp_size)
            done += 1
            if done >= total:
                break
        epoch += 1
    stats = meter.summary()
    mem = torch.tensor([peak_memory_mb(trainer.device), rss_before], dtype=torch.float64)
    if dist.is_initialized():
        parts = [torch.zeros_like(mem) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, mem)
        mem = torch.stack(parts)
    else:
        mem = mem[None]
    result = {"throughput_structures_per_s": stats.get("throughput", 0.0),
              "latency_mean_ms": stats.get("latency_mean_ms", 0.0), "latency_p90_ms": stats.get("latency_p90_ms", 0.0),
              "gp_size": args.gp_size, "world_size": mem.shape[0], "params": count_parameters(trainer.model),
              "peak_memory_mb_per_rank": [round(v, 1) for v in mem[:, 0].tolist()],
              "memory_growth_mb_per_rank": [round(v, 1) for v in (mem[:, 0] - mem[:, 1]).tolist()]}
    logger.log((), result)
    if is_main_process():
        print("BENCHMARK " + json.dumps(result), flush=True)
    return result


def main(argv=None) -> Optional[Dict[str, float]]:
    args = build_parser().parse_args(argv)
    env = init_distributed()
    if args.cuda_graphs:
        require_cuda_graphs(env.device)
        raise RuntimeError("--cuda_graphs: graph-parallel steps communicate and change shape every batch; "
                           "CUDA graph capture is not supported for graph_parallel")
    if args.compile:
        raise ValueError("--compile is not supported by graph_parallel: conservative forces need a double "
                         "backward (which torch.compile does not support) and the collectives are custom "
                         "autograd Functions with process-group calls; run without --compile")
    set_tf32(args.tf32)
    grid = ProcessGrid(args.gp_size)
    logger = setup_logger(args.log_dir, wandb=args.wandb, wandb_project=args.wandb_project,
                          tensorboard=args.tensorboard, silent=args.silent, run_name=f"{args.model}-gp{args.gp_size}")
    logger.log_params({**vars(args), "world_size": env.world_size, "dp_size": grid.dp_size})
    train_set = LmdbDataset(split_path(args, "train"))
    val_path = split_path(args, "val")
    val_set = LmdbDataset(val_path) if (args.val_path or val_path.exists()) else None
    trainer = Trainer(args, grid, env.device, logger, energy_normalizer(train_set))
    if is_main_process():
        print(f"{args.model}/{args.preset}: {count_parameters(trainer.model):,} parameters; {grid}; "
              f"{len(train_set)} train / {len(val_set) if val_set else 0} val frames", flush=True)
    train_loader = make_loader(train_set, args, grid, train=True)
    if args.load_ckpt_path:
        trainer.load(args.load_ckpt_path, resume=not args.evaluate)
    elif args.model.startswith("gemnet") and args.fit_scale_batches > 0:
        fit_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=False,
                                collate_fn=train_loader.collate_fn)
        batches = [b.to(env.device) for _, b in zip(range(args.fit_scale_batches), fit_loader)]
        scales = fit_scale_factors(trainer.model, batches)
        if trainer.ema is not None:                  # the EMA copy was taken before fitting
            trainer.ema.module.load_state_dict(trainer.model.state_dict())
        if is_main_process():
            print(f"fitted {len(scales)} GemNet scaling factors: " + ", ".join(f"{s:.3g}" for s in scales),
                  flush=True)
    val_loader = make_loader(val_set, args, grid, train=False) if val_set is not None else None
    result = None
    try:
        if args.evaluate:
            if val_loader is None:
                raise FileNotFoundError(f"--evaluate needs validation data; {val_path} not found")
            result = trainer.evaluate(val_loader)
            logger.log((), {f"val_{k}": v for k, v in result.items()})
        elif args.benchmark:
            result = benchmark(trainer, train_loader, args, logger)
        else:
            result = train(trainer, train_loader, val_loader, args, logger)
    finally:
        logger.flush()
        logger.close()
        shutdown()
    return result


def train(trainer: Trainer, train_loader, val_loader, args, logger) -> Dict[str, float]:
    metrics: Dict[str, float] = {}
    for epoch in range(trainer.epoch, args.epochs):
        trainer.epoch = epoch
        set_epoch(train_loader, epoch, args.seed)
        running = []
        for batch in progress(train_loader, desc=f"epoch {epoch}", enabled=False if args.silent else None):
            out = trainer.train_step(batch)
            running.append(out["train_loss"])
            if out.pop("stepped", 0.0) and trainer.step % args.log_every == 0:
                logger.log((epoch, trainer.step), {**out, "lr": trainer.optimizer.param_groups[0]["lr"]})
            if args.max_steps and trainer.step >= args.max_steps:
                break
        metrics = {"epoch_train_loss": sum(running) / max(len(running), 1)}
        if val_loader is not None and ((epoch + 1) % max(args.eval_interval, 1) == 0 or epoch + 1 == args.epochs):
            val = trainer.evaluate(val_loader)
            metrics.update({f"val_{k}": v for k, v in val.items()})
            if args.scheduler == "plateau":
                trainer.scheduler.step(val["loss"])
        logger.log((epoch,), metrics)
        if args.save_ckpt_path and (args.ckpt_interval > 0 and (epoch + 1) % args.ckpt_interval == 0
                                    or epoch + 1 == args.epochs):
            trainer.save(args.save_ckpt_path)
        if args.max_steps and trainer.step >= args.max_steps:
            if args.save_ckpt_path:
                trainer.save(args.save_ckpt_path)
            break
    return metrics


if __name__ == "__main__":
    main()
