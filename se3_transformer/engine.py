"""What train, evaluate and predict share: flags, the model, data set-up, target scaling, evaluation.

=====================  ===========================================================================
concern                rule
=====================  ===========================================================================
architecture           ``ARCH_KEYS`` (layers, heads, degrees, channels, pooling, norms): stored in
                       the checkpoint's ``meta["config"]``; a resumed run must match it, evaluate
                       and predict take it from the checkpoint (flags given there must agree).
execution              ``--fuse_level``, ``--low_memory``, ``--pad_trick`` change how kernels run,
                       not the parameters or the function: free to change on every run.
presets                ``--preset nvidia`` (default: NVIDIA's QM9 configuration) or ``small``; an
                       explicit model flag overrides its preset value.
targets                standardised with the training split's mean and std (stored in the
                       checkpoint); loss is L1 on the standardised target, MAE is in the target's
                       unit (``QM9_UNITS``).
evaluation             a :class:`~runtime.data.ShardSampler` loader: every molecule exactly once over
                       all ranks; sums and counts are all-reduced once; run on the unwrapped model.
=====================  ===========================================================================
"""
from __future__ import annotations

import argparse
import math
from typing import Dict

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from runtime.callbacks import PerformanceMeter, peak_memory_mb
from runtime.checkpoint import check_meta, config_differences, load_checkpoint, read_checkpoint
from runtime.cli import ArgumentParser, add_bool, add_common_args, checkpoint_to_load, positive_int, refuse_unused, \
    resolve_num_workers
from runtime.data import ShardSampler, make_loader
from runtime.devicecheck import expected_sync
from runtime.distributed import all_reduce_sum, barrier, get_world_size, init_distributed, is_initialized, \
    is_main_process
from runtime.errors import CheckpointError, ConfigError
from runtime.io import ensure_writable_dir
from runtime.precision import Precision, set_tf32
from se3_transformer.data import DATASETS, DEFAULT_DATA_DIR, EDGE_FEATURE_DIM, NODE_FEATURE_DIM, QM9_TARGETS, \
    QM9_UNITS, SPLITS, QM9GraphDataset, load_qm9, precompute_bases, split_indices
from se3_transformer.model import FuseLevel, SE3TransformerPooled

RECIPE = "se3_transformer"
FUSE_LEVELS = {"full": FuseLevel.FULL, "partial": FuseLevel.PARTIAL, "none": FuseLevel.NONE}
ARCH_KEYS = ("num_layers", "num_heads", "channels_div", "num_degrees", "num_channels", "pooling", "norm",
             "use_layer_norm")
PRESETS: Dict[str, Dict] = {
    # NVIDIA's QM9 training configuration (scripts/train.sh of DeepLearningExamples' SE3Transformer)
    "nvidia": dict(num_layers=7, num_heads=8, channels_div=2, num_degrees=4, num_channels=32, pooling="max",
                   norm=True, use_layer_norm=True),
    # the CPU-sized model of the README's measured runs and the quickstart
    "small": dict(num_layers=4, num_heads=4, channels_div=2, num_degrees=3, num_channels=16, pooling="max",
                  norm=True, use_layer_norm=True),
}
_HELP = {"num_layers": "attention blocks", "num_heads": "attention heads",
         "channels_div": "channel division before attention",
         "num_degrees": "hidden features have degrees 0 .. num_degrees-1", "num_channels": "channels per hidden degree",
         "pooling": "graph pooling", "norm": "equivariant norm layer after each attention block",
         "use_layer_norm": "layer norm inside the radial MLPs"}


def add_data_args(parser: argparse.ArgumentParser, from_checkpoint: bool = False) -> None:
    """``--dataset --num_molecules --task --precompute_bases``; with ``from_checkpoint`` the first
    three default to the checkpoint's values."""
    group = parser.add_argument_group("data")
    ckpt = " (default: the checkpoint's)" if from_checkpoint else ""
    group.add_argument("--dataset", choices=DATASETS, default=None if from_checkpoint else "sample",
                       help="QM9 source: the embedded 1,000-molecule sample, the qm9pack wheel, or DGL's "
                            "qm9_edge.npz (downloaded into --data_dir when absent)" + ckpt)
    group.add_argument("--num_molecules", type=positive_int, default=None,
                       help="use a seeded random subset of this many molecules (split scaled from "
                            "100,000 / 17,748 / 13,083)" + (ckpt or " (default: all)"))
    group.add_argument("--task", choices=QM9_TARGETS, default=None if from_checkpoint else "homo",
                       help="QM9 target to regress (DGL's names and units)" + ckpt)
    add_bool(group, "--precompute_bases", default=None,
             help="compute the equivariant bases of all edges once at start-up instead of every step (default: false)")
    parser.add_check(check_data_dir)


def check_data_dir(args, given) -> None:
    """``--data_dir`` is where qm9pack's cache and DGL's file live; the embedded sample needs none."""
    if "data_dir" in given and args.dataset == "sample":
        refuse_unused("--data_dir", "with --dataset sample (the embedded 1,000-molecule set)")


def add_model_args(parser: argparse.ArgumentParser, from_checkpoint: bool = False) -> None:
    """Architecture flags. Training: defaults from ``--preset``. Evaluation: from the checkpoint, and
    a flag that is given must agree with it (NVIDIA's command lines pass them)."""
    group = parser.add_argument_group("model")
    if not from_checkpoint:
        group.add_argument("--preset", choices=tuple(PRESETS), default="nvidia",
                           help="model size: nvidia = 7 layers, degrees 0-3, 32 channels, 8 heads (NVIDIA's "
                                "QM9 model); small = 4 layers, degrees 0-2, 16 channels, 4 heads (CPU-sized)")
    for key in ARCH_KEYS:
        default = " (default: the checkpoint's; must agree with it)" if from_checkpoint else \
            f" (default: {PRESETS['nvidia'][key]!s} with --preset nvidia)".replace("True", "true")
        if key in ("norm", "use_layer_norm"):
            add_bool(group, f"--{key}", default=None, help=_HELP[key] + default)
        elif key == "pooling":
            group.add_argument("--pooling", choices=("max", "avg"), default=None, help=_HELP[key] + default)
        else:
            group.add_argument(f"--{key}", type=positive_int, default=None, help=_HELP[key] + default)
    exe = parser.add_argument_group("kernels (same parameters and results; free to change on every run)")
    add_bool(exe, "--low_memory", default=None,
             help="unfused kernels recomputed in the backward pass: slower, less memory (default: false)")
    exe.add_argument("--fuse_level", choices=("auto",) + tuple(FUSE_LEVELS), default="auto",
                     help="most fused TFN kernel allowed (each layer uses the best one its fibers permit); "
                          "auto = full on CUDA, none (pairwise, measured fastest) on CPU")
    add_bool(exe, "--pad_trick", default=None,
             help="pad odd basis dimensions to even sizes (tensor cores) (default: false)")
    parser.add_check(refuse_cuda_graphs)


def refuse_cuda_graphs(args, given) -> None:
    if args.cuda_graphs:
        raise ConfigError("--cuda_graphs is not supported by the SE(3)-Transformer: every batch of molecules has "
                          "other node and edge counts, so no fixed-shape step can be captured; drop the flag")


def model_config(args) -> Dict:
    """The architecture (``ARCH_KEYS``) as plain data, as stored in checkpoints: each flag given, else
    the ``--preset``'s value."""
    preset = PRESETS[args.preset]
    return {k: preset[k] if getattr(args, k) is None else getattr(args, k) for k in ARCH_KEYS}


def config_from_checkpoint(path: str, meta: Dict, args: argparse.Namespace) -> Dict:
    """The checkpoint's architecture; refuses architecture flags on the command line that disagree."""
    config = meta.get("config")
    if not isinstance(config, dict) or any(k not in config for k in ARCH_KEYS):
        raise CheckpointError(f"checkpoint {path} carries no SE(3)-Transformer model config; was it written by "
                              "se3_transformer.train?")
    differ = [f"--{k} {_flag(getattr(args, k))} vs the checkpoint's {_flag(config[k])}"
              for k in ARCH_KEYS if getattr(args, k, None) is not None and getattr(args, k) != config[k]]
    if differ:
        raise ConfigError(f"the model flags disagree with checkpoint {path}: " + "; ".join(differ)
                          + " (the architecture comes from the checkpoint: drop these flags)")
    return {k: config[k] for k in ARCH_KEYS}


def _flag(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def check_identity(path: str, meta: Dict, expect: Dict, hint: str = "") -> None:
    """Refuse a checkpoint whose identity differs; architecture differences are listed key by key."""
    config = expect.get("config")
    saved = meta.get("config")
    if config is not None and isinstance(saved, dict) and saved != config:
        differ = config_differences(saved, config, describe=_flag)
        raise CheckpointError(f"checkpoint {path} has another architecture: " + "; ".join(differ)
                              + " (pass the checkpoint's model flags)")
    try:
        check_meta(path, meta, expect)
    except CheckpointError as err:
        raise CheckpointError(f"{err}{hint}") from None


def read_se3_checkpoint(path: str) -> Dict:
    """:func:`runtime.checkpoint.read_checkpoint`, giving checkpoints written before the shared loop
    (format v1: identity in ``extra``) the ``meta`` of today's, so they resume and evaluate as before."""
    state = read_checkpoint(path)
    extra = state.get("extra") or {}
    if not state.get("meta") and isinstance(extra.get("model_config"), dict):
        state["meta"] = {"recipe": RECIPE, "model": RECIPE,
                         "config": {k: extra["model_config"].get(k) for k in ARCH_KEYS},
                         "task": extra.get("task"), "dataset": extra.get("source")}
    return state


def resolve_fuse_level(name: str, device: torch.device) -> FuseLevel:
    if name == "auto":
        return FuseLevel.FULL if torch.device(device).type == "cuda" else FuseLevel.NONE
    return FUSE_LEVELS[name]


def build_model(config: Dict, device: torch.device = torch.device("cpu"), fuse_level: str = "auto",
                low_memory: bool = False, pad_trick: bool = False) -> SE3TransformerPooled:
    """The pooled regressor of architecture ``config``, with the given kernel execution settings."""
    return SE3TransformerPooled(
        node_dim=NODE_FEATURE_DIM, edge_dim=EDGE_FEATURE_DIM, num_degrees=config["num_degrees"],
        num_channels=config["num_channels"], pooling=config["pooling"], num_layers=config["num_layers"],
        num_heads=config["num_heads"], channels_div=config["channels_div"], norm=config["norm"],
        use_layer_norm=config["use_layer_norm"], low_memory=low_memory,
        fuse_level=resolve_fuse_level(fuse_level, device), use_pad_trick=pad_trick)


class TargetScaler:
    """Standardises targets with the training-set mean and standard deviation."""

    def __init__(self, mean: float, std: float):
        if not np.isfinite(mean) or not np.isfinite(std) or std <= 0:
            raise ConfigError(f"cannot standardise targets with mean={mean}, std={std} (too few training "
                              "molecules?)")
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


def baseline_mae(targets: np.ndarray, scaler: TargetScaler) -> float:
    """MAE of predicting the training mean for every molecule (``{split}_mae_baseline_mean``)."""
    return float(np.mean(np.abs(targets.astype(np.float64) - scaler.mean)))


@torch.no_grad()
def predict_batches(model, loader, scaler: TargetScaler, precision, device):
    """Yield (batch on the device, prediction in target units) for every batch of ``loader``."""
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            batch = batch.to(device, non_blocking=True)
            with precision.autocast():
                out = model(batch.graph, batch.basis)
            yield batch, scaler.unscale(out.float())
    finally:
        model.train(was_training)


def evaluate_split(model, loader, scaler: TargetScaler, precision, device) -> Dict[str, float]:
    """MAE (target unit), L1 loss (standardised) and count over every rank's shard; one all-reduce."""
    errors = torch.zeros((), dtype=torch.float64, device=device)  # sum of |error| in the target unit
    count = 0  # molecules, known on the host
    for batch, pred in predict_batches(model, loader, scaler, precision, device):
        errors += (pred.double() - batch.graph.y.double()).abs().sum()
        count += batch.num_graphs
    with expected_sync("evaluation result"):
        sums = torch.stack([errors, errors / scaler.std, torch.tensor(float(count), dtype=torch.float64, device=device)])
        mae, loss, count = all_reduce_sum(sums).tolist()
    count = max(count, 1.0)
    return {"mae": mae / count, "loss": loss / count, "count": int(round(count))}


def gather_shards(values: torch.Tensor, total: int) -> torch.Tensor:
    """Reassemble per-rank values of a :class:`~runtime.data.ShardSampler` (rank r holds positions
    r, r + world, ...) into the full ``[total]`` vector, on every rank."""
    world = get_world_size()
    values = values.detach().double().cpu()
    if world == 1 or not is_initialized():
        return values
    size = math.ceil(total / world)
    padded = torch.full((size,), float("nan"), dtype=torch.float64)
    padded[:len(values)] = values
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.stack(parts, dim=1).reshape(-1)[:total]


def benchmark_inference(model, loader, precision, device, warmup: int, steps: int, logger) -> Dict[str, float]:
    """Time forward passes (device-synchronised), cycling the loader; logs ``inference_throughput``
    (molecules/s), ``inference_latency_*`` (ms) and ``peak_memory_mb``."""
    meter = PerformanceMeter(device, warmup_steps=warmup)
    model.eval()
    done = 0
    with torch.no_grad():
        while done < warmup + steps:
            for batch in loader:
                meter.start()
                batch = batch.to(device, non_blocking=True)
                with precision.autocast():
                    model(batch.graph, batch.basis)
                meter.stop(batch.num_graphs * get_world_size())
                done += 1
                if done >= warmup + steps:
                    break
    stats = meter.log(logger, prefix="inference")
    memory = peak_memory_mb(device)
    logger.log((), {"peak_memory_mb": memory})
    return {**stats, "peak_memory_mb": memory}


def l1_loss(pred: torch.Tensor, y: torch.Tensor, scaler: TargetScaler) -> torch.Tensor:
    """The training loss: L1 on the standardised target."""
    return F.l1_loss(pred.float(), scaler.scale(y))


# ---- evaluate / predict ----------------------------------------------------------------------------
def build_inference_parser(prog: str, description: str, entry: str) -> argparse.ArgumentParser:
    """The flags of ``evaluate`` and ``predict``: the shared eval group, data, model (checked against
    the checkpoint), kernels and ``--split``."""
    parser = ArgumentParser(prog=prog, description=description)
    add_common_args(parser, kind="eval", batch_size=240, data_dir=None, log_dir="results/se3_transformer",
                    dllogger_name=f"{entry}_log.json", benchmark_warmup=3, benchmark_steps=10)
    add_data_args(parser, from_checkpoint=True)
    add_model_args(parser, from_checkpoint=True)
    parser.add_argument("--split", choices=SPLITS, default="test", help="which split of the dataset to use")
    return parser


class InferenceRun:
    """A trained model and one split of its data, set up from a checkpoint (see ``build_inference_parser``)."""

    def __init__(self, args: argparse.Namespace):
        self.env = init_distributed(timeout_minutes=args.dist_timeout, gpu_affinity=args.gpu_affinity,
                                    device=args.device)
        self.device = device = self.env.device
        if args.tf32 is not None:
            set_tf32(args.tf32)
        self.checkpoint = path = checkpoint_to_load(args)
        state = read_se3_checkpoint(path)
        meta, extra = state["meta"], state["extra"]
        check_identity(path, meta, {"recipe": RECIPE})
        self.config = config_from_checkpoint(path, meta, args)
        if args.task is not None and args.task != meta.get("task"):
            raise ConfigError(f"--task {args.task} disagrees with checkpoint {path}, which was trained on "
                              f"{meta.get('task')} (drop --task, or train on {args.task} with --finetune)")
        self.task = meta.get("task")
        dataset = args.dataset or meta.get("dataset", "sample")
        num_molecules = extra.get("num_molecules") if args.num_molecules is None else args.num_molecules
        if is_main_process():
            ensure_writable_dir(args.log_dir, "--log_dir")
        self.unit = extra.get("unit") or QM9_UNITS.get(self.task)
        self.scaler = TargetScaler(**extra["target_scaler"])
        self.model = build_model(self.config, device, args.fuse_level, bool(args.low_memory), bool(args.pad_trick))
        load_checkpoint(path, self.model, state=state)
        self.model = self.model.to(device).eval()

        data_dir = args.data_dir or extra.get("data_dir") or DEFAULT_DATA_DIR  # the training run's, resolved

        def read():
            return load_qm9(dataset, data_dir, num_molecules, create_parents=data_dir == DEFAULT_DATA_DIR)

        arrays = read() if is_main_process() else None
        barrier()
        self.arrays = arrays if arrays is not None else read()
        self.split = args.split
        self.ids = dict(zip(("train", "val", "test"), split_indices(len(self.arrays), seed=0)))[args.split]
        report = None if args.silent or not is_main_process() else print
        bases = precompute_bases(self.arrays, self.model.transformer.max_degree, report=report) \
            if args.precompute_bases else None                  # unset (None) means no
        self.dataset = QM9GraphDataset(self.arrays, self.ids, self.task, bases, split=args.split)
        self.loader = make_loader(self.dataset, args.batch_size,
                                  ShardSampler(len(self.dataset), self.env.world_size, self.env.rank),
                                  self.dataset.collate, resolve_num_workers(args.num_workers, device), device)
        self.precision = Precision(args.amp, device, args.amp_dtype)

    def declare_units(self, logger, names) -> None:
        for name in names:
            logger.log_metadata(name, {"unit": self.unit, "format": ":.4f"})
