"""What train, evaluate and predict share: the data source, loaders, the forward pass, evaluation.

=================  ================================================================================
concern            rule
=================  ================================================================================
data source        ``--dataset``: ``emt_small`` (default) is the set embedded in the package; any
                   other value is a directory -- as given, or else under ``--data_dir`` -- holding
                   the splits ``train``, ``val`` (and ``test``) in any readable format
                   (:func:`graph_parallel.data.find_split`: ``NAME.lmdb``, ``NAME.aselmdb``,
                   ``NAME.db``, ``NAME.json`` or a directory ``NAME/`` of shards). Nothing is ever
                   created there. Checkpoints record the directory's name as the dataset.
process grid       ``--gp_size`` consecutive ranks split each graph; world / gp_size is the
                   data-parallel size. Batches are drawn per data-parallel rank, so the ranks of a
                   graph-parallel group read the same batches.
batches            collated, radius-graphed and partitioned for this rank on the CPU (workers),
                   pinned on CUDA and copied once, non-blocking (:mod:`graph_parallel.data.batch`).
precision          ``--amp`` on CUDA defaults to bf16 here (force training differentiates the
                   forces again; fp16 risks underflow in that unscaled inner gradient); TF32 is
                   only touched when ``--tf32`` is given.
evaluation         a :class:`~runtime.data.ShardSampler` over the data-parallel ranks: every
                   structure exactly once; error sums stay on the device and are all-reduced once
                   over the data-parallel group (every graph-parallel rank holds the whole batch's
                   energies and forces).
=================  ================================================================================
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
import torch.distributed as dist

from graph_parallel.data import EMBEDDED_DATA_DIR, Collater, find_split, open_dataset
from graph_parallel.data.batch import IndexedDataset, S2EFBatch
from graph_parallel.losses import SUMS, EnergyBaselines, Normalizer, s2ef_error_sums, s2ef_metrics
from graph_parallel.models import edge_kind, predict
from runtime.callbacks import PerformanceMeter, peak_memory_mb
from runtime.cli import add_refused, positive_float, positive_int, refuse_unused
from runtime.data import ShardSampler, make_loader
from runtime.devicecheck import expected_sync
from runtime.distributed import ProcessGrid, get_world_size, is_initialized
from runtime.errors import ConfigError, DataError, MissingFileError
from runtime.precision import Precision

RECIPE = "graph_parallel"
EMBEDDED = "emt_small"
DEFAULT_DATA_DIR = "data/graph_parallel"
RESULTS_DIR = "results/graph_parallel"
DEFAULT_CUTOFF, DEFAULT_MAX_NEIGHBORS = 6.0, 50
CUDA_GRAPHS_REFUSED = ("--cuda_graphs is not supported by graph_parallel: every batch has other atom, edge and "
                       "triplet counts and the collectives change with them, so no fixed-shape step can be "
                       "captured; drop the flag")
COMPILE_REFUSED = ("--compile is not supported by graph_parallel: conservative forces need a double backward "
                   "(which torch.compile does not support) and the collectives are custom autograd Functions "
                   "with process-group calls; drop the flag")


# ---- flags -------------------------------------------------------------------------------------------
def add_data_args(parser: argparse.ArgumentParser, from_checkpoint: bool = False) -> None:
    group = parser.add_argument_group("data")
    ckpt = " (default: the checkpoint's)" if from_checkpoint else ""
    group.add_argument("--dataset", default=None if from_checkpoint else EMBEDDED,
                       help=f"'{EMBEDDED}' (the embedded EMT set) or a directory with train/val splits (.lmdb, "
                            ".aselmdb, .db, .json or shard directories), as a path or a name under --data_dir"
                            + ckpt)
    if not from_checkpoint:
        group.add_argument("--cutoff", type=positive_float, default=None,
                           help=f"radius graph cutoff in Angstrom (default: {DEFAULT_CUTOFF}; when resuming or "
                                "fine-tuning, the checkpoint's)")
        group.add_argument("--max_neighbors", type=positive_int, default=None,
                           help=f"nearest neighbours kept per atom (default: {DEFAULT_MAX_NEIGHBORS}; when "
                                "resuming or fine-tuning, the checkpoint's)")
    parser.add_check(check_data_dir)
    for flag in ("--train_path", "--val_path"):
        add_refused(parser, flag, "use --dataset DIR, a directory holding the splits (train.lmdb or train/, "
                                  "val.lmdb or val/, ...); link the files into one directory")


def check_data_dir(args, given) -> None:
    """``--data_dir`` is where a ``--dataset`` name is looked up; a path given and not used is an error."""
    if "data_dir" not in given:
        return
    if args.dataset == EMBEDDED:
        refuse_unused("--data_dir", f"with --dataset {EMBEDDED} (the set embedded in the package)")
    if args.dataset and Path(args.dataset).is_dir():
        refuse_unused("--data_dir", f"when --dataset {args.dataset} is itself a directory")


def add_grid_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gp_size", type=positive_int, default=1,
                        help="consecutive ranks that split one graph (must divide the world size)")


def check_performance_flags(args) -> None:
    if args.cuda_graphs:
        raise ConfigError(CUDA_GRAPHS_REFUSED)
    if args.compile:
        raise ConfigError(COMPILE_REFUSED)


def make_precision(args, device) -> Precision:
    """``--amp``: bf16 by default on CUDA (see the module docstring); ``--amp_dtype fp16`` still works."""
    dtype = args.amp_dtype
    if args.amp and dtype is None and torch.device(device).type == "cuda":
        dtype = "bf16"
    try:
        return Precision(args.amp, device, dtype)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def make_grid(gp_size: int) -> ProcessGrid:
    world = get_world_size()
    if world % gp_size:
        raise ConfigError(f"--gp_size {gp_size} must divide the number of processes ({world}); launch with "
                          f"torchrun --nproc_per_node a multiple of {gp_size}")
    return ProcessGrid(gp_size)


# ---- data --------------------------------------------------------------------------------------------
def dataset_dir(dataset: str, data_dir: str) -> Path:
    """The directory ``--dataset`` names (see the module docstring); never creates anything."""
    if dataset == EMBEDDED:
        return EMBEDDED_DATA_DIR
    given = Path(dataset)
    for candidate in (given, Path(data_dir) / dataset):
        if candidate.is_dir():
            return candidate
        if candidate.exists():
            raise DataError(f"--dataset {dataset}: {candidate} is a file; give the directory that holds the "
                            "splits (train.lmdb, val.lmdb, ...)")
    under = Path(data_dir) / dataset
    raise MissingFileError(f"--dataset {dataset}: neither {given} nor {under} is a directory; build one with "
                           f"`python -m graph_parallel.make_dataset --out_dir {under}` or use --dataset {EMBEDDED}")


def dataset_name(dataset: str, data_dir: str) -> str:
    """What a checkpoint records as its dataset: the directory's name."""
    return EMBEDDED if dataset == EMBEDDED else dataset_dir(dataset, data_dir).resolve().name


def open_split(root: Path, split: str, required: bool = True):
    """The reader for split ``split`` of ``root``, checked to hold frames (None if absent and not required)."""
    path = find_split(root, split, required=required)
    if path is None:
        return None
    data = open_dataset(path)
    if len(data) == 0:
        raise DataError(f"{path}: the {split} split holds no frames")
    data.raw(0)                                   # decode and validate one record before any work starts
    return data


def make_collater(model, cutoff: float, max_neighbors: int, grid: ProcessGrid) -> Collater:
    """Batches with the radius graph ``model`` expects (:func:`graph_parallel.models.edge_kind`), as the calculator."""
    return Collater(cutoff, max_neighbors, edge_kind(model), grid.gp_rank, grid.gp_size, model.triplet_kind)


def eval_loader(dataset, batch_size: int, collater: Collater, grid: ProcessGrid, workers: int, device,
                indexed: bool = False):
    """Every structure exactly once over the data-parallel ranks (graph-parallel ranks share shards)."""
    sampler = ShardSampler(len(dataset), grid.dp_size, grid.dp_rank)
    if len(sampler) == 0:
        raise ConfigError(f"the split has {len(dataset)} structures, fewer than the {grid.dp_size} data-parallel "
                          "groups: lower the number of processes or raise --gp_size")
    return make_loader(IndexedDataset(dataset) if indexed else dataset, batch_size, sampler, collater, workers,
                       device)


# ---- forward -----------------------------------------------------------------------------------------
def forward(model, batch: S2EFBatch, grid: ProcessGrid, precision: Precision, compute_forces: bool = True,
            create_graph: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Normalised energies [B] and forces [N, 3] (float32) of the whole batch, on every gp rank."""
    with precision.autocast():
        energy, forces = predict(model, batch, batch.part, grid.gp_group, compute_forces=compute_forces,
                                 create_graph=create_graph)
    return energy.float(), (forces.float() if forces is not None else None)


@torch.no_grad()
def evaluate_split(model, loader, grid: ProcessGrid, precision: Precision, device, norm: Normalizer,
                   baselines: Optional[EnergyBaselines], energy_coef: float = 1.0,
                   force_coef: float = 50.0) -> Dict[str, float]:
    """Metrics over every structure of the loader's split (names without the split prefix; see
    :func:`graph_parallel.losses.s2ef_metrics`); one all-reduce over the data-parallel group."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(len(SUMS), dtype=torch.float64, device=device)
    weights = baselines.weights_on(device) if baselines is not None else None
    try:
        for batch in loader:
            batch = batch.to(device, non_blocking=True)
            energy, forces = forward(model, batch, grid, precision)
            sums += s2ef_error_sums(energy, forces, batch, norm, baselines, weights)
    finally:
        model.train(was_training)
    with expected_sync("evaluation result"):
        if grid.dp_group is not None and grid.dp_size > 1:
            dist.all_reduce(sums, group=grid.dp_group)
        totals = sums.tolist()
    return s2ef_metrics(totals, norm, energy_coef, force_coef, baselines=baselines is not None)


def benchmark_inference(model, loader, grid: ProcessGrid, precision: Precision, device, warmup: int, steps: int,
                        logger) -> Dict[str, float]:
    """Time energy + force passes (device-synchronised), cycling the loader; logs ``inference_throughput``
    (structures/s of the whole job), ``inference_latency_*`` (ms) and ``peak_memory_mb`` (largest rank)."""
    meter = PerformanceMeter(device, warmup_steps=warmup)
    model.eval()
    done = 0
    while done < warmup + steps:
        for batch in loader:
            meter.start()
            batch = batch.to(device, non_blocking=True)
            forward(model, batch, grid, precision)
            meter.stop(batch.num_structures * grid.dp_size)
            done += 1
            if done >= warmup + steps:
                break
    stats = meter.log(logger, prefix="inference")
    memory = gather_peak_memory(device)
    logger.log((), {"peak_memory_mb": max(memory)})
    return {**stats, "peak_memory_mb": max(memory), "peak_memory_mb_per_rank": memory}


def gather_peak_memory(device, extra: Optional[float] = None) -> list:
    """Every rank's peak memory (MB), gathered as device tensors; with ``extra`` each entry is a pair."""
    values = [peak_memory_mb(device)] + ([extra] if extra is not None else [])
    mine = torch.tensor(values, dtype=torch.float64, device=device)
    if is_initialized() and get_world_size() > 1:
        parts = [torch.empty_like(mine) for _ in range(get_world_size())]
        dist.all_gather(parts, mine)
        mine = torch.stack(parts)
    else:
        mine = mine[None]
    rows = mine.cpu().tolist()
    return [round(r[0], 1) for r in rows] if extra is None else [[round(v, 1) for v in r] for r in rows]


def world_info(grid: ProcessGrid) -> Dict[str, int]:
    return {"world_size": get_world_size(), "gp_size": grid.gp_size, "dp_size": grid.dp_size}


# ---- evaluate / predict ------------------------------------------------------------------------------
def build_inference_parser(prog: str, description: str, entry: str) -> argparse.ArgumentParser:
    """The flags of ``evaluate`` and ``predict``: the shared eval group, data, ``--split``, ``--gp_size``.

    Their log is ``{entry}_log.json`` in the recipe's results directory, beside the training log (which
    a new evaluation therefore does not set aside)."""
    from runtime.cli import ArgumentParser, add_bool, add_common_args

    parser = ArgumentParser(prog=prog, description=description)
    add_common_args(parser, kind="eval", batch_size=8, log_dir=RESULTS_DIR, data_dir=DEFAULT_DATA_DIR,
                    dllogger_name=f"{entry}_log.json", benchmark_warmup=3, benchmark_steps=10)
    add_data_args(parser, from_checkpoint=True)
    parser.add_argument("--split", default="val", choices=("train", "val", "test"), help="which split to use")
    add_grid_args(parser)
    add_bool(parser, "--use_ema", default=True, help="use the checkpoint's EMA weights when it has them")
    add_edges_arg(parser)
    return parser


def add_edges_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--symmetric_edges", choices=("union", "one_sided"), default=None,
                        help="GemNet's radius graph: 'one_sided' is fairchem's (each edge j->i with j < i of the "
                             "max_neighbors-truncated graph, plus its reverse), 'union' this project's (every kept "
                             "edge plus its reverse); they differ only where an atom reaches max_neighbors "
                             "(default: the checkpoint's; converted fairchem GemNets say one_sided)")


def choose_edges(model, symmetric_edges: Optional[str]) -> None:
    """``--symmetric_edges``: override the GemNet checkpoint's edge selection (None keeps it)."""
    if symmetric_edges is None:
        return
    if not model.symmetric_graph:
        raise ConfigError(f"--symmetric_edges {symmetric_edges} applies to GemNet; {type(model).__name__} uses the "
                          "directed max_neighbors graph, which is also fairchem's: drop the flag")
    model.cfg.symmetric_edges = symmetric_edges


class InferenceRun:
    """A trained model and one split of its data, set up from a checkpoint that carries its config.

    The model, its radius graph (cutoff, max_neighbors) and the energy normaliser come from the
    checkpoint (:func:`graph_parallel.checkpoints.model_from_checkpoint`); the dataset is
    ``--dataset`` or the checkpoint's. Baselines: the checkpoint's (fitted on its training set), or,
    for checkpoints without them (converted weights), fitted on the dataset's train split if it has one.
    """

    def __init__(self, args: argparse.Namespace, indexed: bool = False):
        from runtime.cli import checkpoint_to_load, resolve_num_workers
        from runtime.distributed import init_distributed, is_main_process
        from runtime.precision import set_tf32

        from graph_parallel.checkpoints import model_from_checkpoint
        from graph_parallel.losses import energy_statistics

        check_performance_flags(args)
        self.env = init_distributed(timeout_minutes=args.dist_timeout, gpu_affinity=args.gpu_affinity,
                                    device=args.device)
        self.device = device = self.env.device
        self.grid = make_grid(args.gp_size)
        if args.tf32 is not None:
            set_tf32(args.tf32)
        if is_main_process():
            from runtime.io import ensure_writable_dir

            ensure_writable_dir(args.log_dir, "--log_dir")
        self.checkpoint = checkpoint_to_load(args)
        self.model, self.info = model_from_checkpoint(self.checkpoint, device, use_ema=args.use_ema)
        choose_edges(self.model, args.symmetric_edges)
        for p in self.model.parameters():           # only -dE/dpos is needed
            p.requires_grad_(False)
        extra = self.info["extra"]
        root = self.data_root(args, extra)
        self.dataset = open_split(root, args.split)
        self.norm = Normalizer(**self.info["normalizer"])
        if extra.get("baselines"):
            self.baselines = EnergyBaselines.from_state(extra["baselines"])
        else:
            train = open_split(root, "train", required=False)
            self.baselines = energy_statistics(train)[1] if train is not None else None
        self.energy_coef = float(extra.get("energy_coef", 1.0))
        self.force_coef = float(extra.get("force_coef", 50.0))
        self.precision = make_precision(args, device)
        collater = make_collater(self.model, self.info["cutoff"], self.info["max_neighbors"], self.grid)
        self.loader = eval_loader(self.dataset, args.batch_size, collater, self.grid,
                                  resolve_num_workers(args.num_workers, device), device, indexed=indexed)

    def data_root(self, args, extra: Dict) -> Path:
        """``--dataset`` (under ``--data_dir``), or else the directory the checkpoint was trained on (stored
        resolved, so this works from any working directory), or else the checkpoint's dataset name."""
        if args.dataset:
            return dataset_dir(args.dataset, args.data_dir)
        saved = extra.get("dataset_path")
        if saved and Path(saved).is_dir():
            return Path(saved)
        return dataset_dir(self.info["meta"].get("dataset") or EMBEDDED, args.data_dir)
