"""Run a function on N local processes over gloo, the way torchrun would, and collect results.

Used by the test-suites of every package to check distributed code on a CPU machine.
"""
from __future__ import annotations

import os
import socket
import tempfile
from typing import Any, Callable, List

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out_dir: str, fn: Callable, args: tuple) -> None:
    import runtime.distributed as rd

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    rd._ENV = None
    rd.init_distributed(backend="gloo", timeout_s=120)
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        rd.shutdown()


def run_distributed(fn: Callable, world_size: int, *args: Any) -> List[Any]:
    """Spawn ``world_size`` gloo processes running ``fn(rank, world_size, *args)``; return their results.

    ``fn`` must be importable (defined at module level). An exception on any rank fails the call.
    """
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, args=(world_size, free_port(), out_dir, fn, args), nprocs=world_size, join=True)
        return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(world_size)]
