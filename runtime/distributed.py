"""Process setup from torchrun's environment, DDP wrapping and the data x graph parallel grid.

Single-process runs (no ``WORLD_SIZE`` in the environment) need no process group; every helper
here then degrades to the obvious no-op, so the same training loop serves both cases.

Backends: gloo on CPU; on CUDA one process group with ``cpu:gloo,cuda:nccl``, so a collective on a
CPU tensor (a metric sum, a memory figure) works instead of failing on NCCL.

Testing several ranks on one GPU: with ``MOLRECIPES_SHARE_GPU=1`` every local rank uses ``cuda:0`` and
the process group is gloo (which takes CUDA tensors; NCCL refuses two ranks on one device). For
checks only (``scripts/gpu_check.sh --share_gpu``): the ranks contend for the one GPU.

Bounded failure: every collective waits at most ``--dist_timeout`` minutes (gloo raises; NCCL's
watchdog tears the process down, ``TORCH_NCCL_ASYNC_ERROR_HANDLING=1``). A dead peer is seen by gloo
at once. A watchdog thread exits the process with a message when its launcher (the torchrun agent)
dies, instead of leaving an orphan holding a GPU.
"""
from __future__ import annotations

import datetime
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_ENV: Optional[DistEnv] = None
SHARE_GPU_ENV = "MOLRECIPES_SHARE_GPU"


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def _watch_launcher(poll_s: float = 1.0) -> None:
    """Exit with a message when the parent (launcher) process dies and this one is re-parented."""
    parent = os.getppid()

    def watch():
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                print(f"error: the launcher (pid {parent}) died; rank {os.environ.get('RANK', '?')} exits instead of "
                      "waiting for peers that will never come", file=sys.stderr, flush=True)
                os._exit(1)

    threading.Thread(target=watch, name="launcher-watchdog", daemon=True).start()


def init_distributed(backend: Optional[str] = None, timeout_s: Optional[float] = None,
                     timeout_minutes: float = 10.0, gpu_affinity: str = "none", device: str = "auto") -> DistEnv:
    """Join the process group described by torchrun's env vars (RANK, WORLD_SIZE, LOCAL_RANK).

    Uses ``cpu:gloo,cuda:nccl`` when CUDA is available and gloo otherwise (``backend`` overrides).
    Collectives time out after ``timeout_minutes`` (``--dist_timeout``; ``timeout_s`` overrides).
    ``gpu_affinity`` pins the process to its GPU's cores (:mod:`runtime.affinity`, ``--gpu_affinity``).
    ``device`` (``--device``): ``auto`` takes CUDA device LOCAL_RANK when CUDA is visible, ``cpu`` never does.
    Without ``WORLD_SIZE`` (or with ``WORLD_SIZE=1``) this is a single-process run. Idempotent.
    """
    global _ENV
    if _ENV is not None:
        return _ENV
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    from runtime.cli import device_type          # the one --device rule (cuda without CUDA: a ConfigError)

    use_cuda = device_type(device) == "cuda"
    share = os.environ.get(SHARE_GPU_ENV) == "1"
    if use_cuda:
        if local_rank >= torch.cuda.device_count() and not share:
            raise RuntimeError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA devices are visible")
        index = 0 if share else local_rank
        torch.cuda.set_device(index)
        device = torch.device("cuda", index)
    else:
        device = torch.device("cpu")
    from runtime.affinity import set_affinity

    set_affinity(gpu_affinity, local_rank, device.type)
    if world_size > 1 and not dist.is_initialized():
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise RuntimeError(f"WORLD_SIZE={world_size} but {var} is not set: launch with torchrun")
        backend = backend or ("cpu:gloo,cuda:nccl" if use_cuda and not share else "gloo")
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        seconds = timeout_s if timeout_s is not None else 60.0 * timeout_minutes
        kwargs = dict(backend=backend, init_method="env://", rank=rank, world_size=world_size,
                      timeout=datetime.timedelta(seconds=seconds))
        if "nccl" in backend:
            kwargs["device_id"] = device
        dist.init_process_group(**kwargs)
        _watch_launcher()
    _ENV = DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=device)
    return _ENV


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def get_device() -> torch.device:
    if _ENV is not None:
        return _ENV.device
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def wrap_ddp(model: nn.Module, process_group=None, **ddp_kwargs) -> nn.Module:
    """DistributedDataParallel over ``process_group`` (default: the world) when it has >1 rank."""
    size = dist.get_world_size(process_group) if is_initialized() else 1
    if size <= 1:
        return model
    device = get_device()
    if device.type == "cuda":
        ddp_kwargs.setdefault("device_ids", [device.index])
        ddp_kwargs.setdefault("output_device", device.index)
    return nn.parallel.DistributedDataParallel(model, process_group=process_group, **ddp_kwargs)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP and/or torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Every rank takes rank ``src``'s parameters and buffers (as DDP does when it wraps a model).

    For models trained without DDP (graph parallelism syncs gradients itself): independent
    initialisations agree only up to the round-off of their RNG and LAPACK paths (an orthogonal
    init's QR varies with the thread count), so a new run starts from one rank's copy.
    """
    if not is_initialized():
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=src)


def all_reduce_sum(tensor: torch.Tensor, group=None) -> torch.Tensor:
    if is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor


def all_reduce_mean(tensor: torch.Tensor, group=None) -> torch.Tensor:
    if is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
        tensor /= dist.get_world_size(group)
    return tensor


class ProcessGrid:
    """Data-parallel x graph-parallel grid over the world.

    Consecutive ranks form a graph-parallel group (they share one batch and split its graph);
    ranks with the same position in their graph-parallel group form a data-parallel group.
    With world size 8 and ``gp_size=2``: gp groups [0,1] [2,3] [4,5] [6,7]; dp groups
    [0,2,4,6] and [1,3,5,7].
    """

    def __init__(self, gp_size: int = 1):
        world, rank = get_world_size(), get_rank()
        if gp_size < 1 or world % gp_size != 0:
            raise ValueError(f"gp_size={gp_size} must be >= 1 and divide the world size {world}")
        self.gp_size = gp_size
        self.dp_size = world // gp_size
        self.gp_rank = rank % gp_size
        self.dp_rank = rank // gp_size
        first = self.dp_rank * gp_size
        self.gp_ranks: List[int] = list(range(first, first + gp_size))
        self.dp_ranks: List[int] = list(range(self.gp_rank, world, gp_size))
        self.gp_group = None
        self.dp_group = None
        if is_initialized():
            # Every rank must create every group, in the same order.
            for d in range(self.dp_size):
                ranks = list(range(d * gp_size, (d + 1) * gp_size))
                group = dist.new_group(ranks)
                if d == self.dp_rank:
                    self.gp_group = group
            for g in range(gp_size):
                ranks = list(range(g, world, gp_size))
                group = dist.new_group(ranks)
                if g == self.gp_rank:
                    self.dp_group = group

    def __repr__(self) -> str:
        return (f"ProcessGrid(gp_size={self.gp_size}, dp_size={self.dp_size}, gp_rank={self.gp_rank}, "
                f"dp_rank={self.dp_rank}, gp_ranks={self.gp_ranks})")


def shutdown() -> None:
    """Leave the process group (safe to call in single-process runs).

    The closing barrier runs only on success. Called from ``finally`` while an exception propagates
    (this rank failed alone), it leaves at once: a barrier would wait for peers that are blocked in
    another collective, turning a one-line error into a hang until ``--dist_timeout``.
    """
    global _ENV
    if is_initialized():
        if sys.exc_info()[1] is None:
            dist.barrier()
        dist.destroy_process_group()
    _ENV = None
