"""Pieces shared by training and inference: model flags, model construction, loaders, evaluation."""
from __future__ import annotations

import argparse
from typing import Dict, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from runtime.callbacks import PerformanceMeter, peak_memory_mb
from runtime.distributed import all_reduce_sum, make_sampler
from se3_transformer.data import EDGE_FEATURE_DIM, NODE_FEATURE_DIM, QM9GraphDataset
from se3_transformer.model import FuseLevel, SE3TransformerPooled

FUSE_LEVELS = {"full": FuseLevel.FULL, "partial": FuseLevel.PARTIAL, "none": FuseLevel.NONE}
MODEL_KEYS = ("num_layers", "num_heads", "channels_div", "num_degrees", "num_channels", "pooling", "norm",
              "use_layer_norm", "low_memory", "fuse_level", "pad_trick")


def add_data_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--source", choices=("sample", "qm9pack", "dgl"), default="sample",
                       help="QM9 source: embedded 1,000-molecule sample, the qm9pack wheel, or DGL's qm9_edge.npz "
                            "(downloaded into --data_dir)")
    group.add_argument("--num_molecules", type=int, default=None,
                       help="use a seeded random subset of this many molecules (split scaled from 100k/17,748/13,083)")
    group.add_argument("--task", default="homo", help="QM9 target to regress (DGL names: homo, lumo, gap, mu, ...)")
    group.add_argument("--precompute_bases", action="store_true",
                       help="compute the equivariant bases of all edges once at start-up instead of every step")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--num_layers", type=int, default=7, help="attention blocks")
    group.add_argument("--num_heads", type=int, default=8, help="attention heads")
    group.add_argument("--channels_div", type=int, default=2, help="channel division before attention")
    group.add_argument("--num_degrees", type=int, default=4, help="hidden features have degrees 0 .. num_degrees-1")
    group.add_argument("--num_channels", type=int, default=32, help="channels per hidden degree")
    group.add_argument("--pooling", choices=("max", "avg"), default="max", help="graph pooling")
    group.add_argument("--norm", action=argparse.BooleanOptionalAction, default=True,
                       help="equivariant norm layer after each attention block")
    group.add_argument("--use_layer_norm", action=argparse.BooleanOptionalAction, default=True,
                       help="layer norm inside the radial MLPs")
    group.add_argument("--low_memory", action="store_true",
                       help="unfused kernels recomputed in the backward pass: slower, less memory")
    group.add_argument("--fuse_level", choices=("auto",) + tuple(FUSE_LEVELS), default="auto",
                       help="most fused TFN kernel allowed (each layer uses the best one its fibers permit); "
                            "auto = full on CUDA, none (pairwise, measured fastest) on CPU")
    group.add_argument("--pad_trick", action="store_true",
                       help="pad odd basis dimensions to even sizes (tensor cores); same results")


def model_config(args: argparse.Namespace) -> Dict:
    return {k: getattr(args, k) for k in MODEL_KEYS}


def resolve_fuse_level(name: str, device: torch.device) -> FuseLevel:
    if name == "auto":
        return FuseLevel.FULL if torch.device(device).type == "cuda" else FuseLevel.NONE
    return FUSE_LEVELS[name]


def build_model(config: Dict, device: torch.device = torch.device("cpu")) -> SE3TransformerPooled:
    return SE3TransformerPooled(
        node_dim=NODE_FEATURE_DIM, edge_dim=EDGE_FEATURE_DIM, num_degrees=config["num_degrees"],
        num_channels=config["num_channels"], pooling=config["pooling"], num_layers=config["num_layers"],
        num_heads=config["num_heads"], channels_div=config["channels_div"], norm=config["norm"],
        use_layer_norm=config["use_layer_norm"], low_memory=config["low_memory"],
        fuse_level=resolve_fuse_level(config["fuse_level"], device), use_pad_trick=config["pad_trick"])


def make_loader(dataset: QM9GraphDataset, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0,
                drop_last: bool = False) -> DataLoader:
    sampler = make_sampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      collate_fn=dataset.collate, num_workers=num_workers, drop_last=drop_last,
                      generator=generator, persistent_workers=num_workers > 0)


class TargetScaler:
    """Standardises targets with the training-set mean and standard deviation."""

    def __init__(self, mean: float, std: float):
        if not np.isfinite(mean) or not np.isfinite(std) or std <= 0:
            raise ValueError(f"cannot standardise targets with mean={mean}, std={std}")
        self.mean, self.std = float(mean), float(std)

    @classmethod
    def fit(cls, targets: np.ndarray) -> "TargetScaler":
        return cls(float(np.mean(targets)), float(np.std(targets)))

    def scale(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.mean) / self.std

    def unscale(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.std + self.mean

    def state_dict(self) -> Dict[str, float]:
        return {"mean": self.mean, "std": self.std}


@torch.no_grad()
def evaluate(model, loader: DataLoader, scaler: TargetScaler, precision, device,
             collect: bool = False) -> Dict:
    """MAE (target units) over all ranks; with ``collect`` also this rank's predictions and targets."""
    model.eval()
    abs_err = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    preds, targets = [], []
    for batch, basis in loader:
        batch = batch.to(device)
        basis = None if basis is None else {k: v.to(device) for k, v in basis.items()}
        with precision.autocast():
            out = model(batch, basis)
        pred = scaler.unscale(out.float())
        abs_err += (pred - batch.y).abs().sum().double()
        count += batch.num_graphs
        if collect:
            preds.append(pred.cpu())
            targets.append(batch.y.cpu())
    all_reduce_sum(abs_err)
    all_reduce_sum(count)
    model.train()
    result = {"mae": float(abs_err / count.clamp(min=1)), "count": int(count)}
    if collect:
        result["pred"] = torch.cat(preds).numpy()
        result["target"] = torch.cat(targets).numpy()
    return result


def log_benchmark(meter: PerformanceMeter, logger, prefix: str, device: torch.device) -> dict:
    """Log the meter's summary plus throughput in molecules/ms and peak memory; returns the stats."""
    stats = meter.log(logger, prefix=prefix)
    stats = {**stats, "throughput_mol_per_ms": stats.get("throughput", 0.0) / 1000,
             "peak_memory_mb": peak_memory_mb(device)}
    logger.log((), {f"{prefix}_throughput_mol_per_ms": stats["throughput_mol_per_ms"],
                    "peak_memory_mb": stats["peak_memory_mb"]})
    return stats
