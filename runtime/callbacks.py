"""Throughput and latency measurement with device synchronization (benchmark mode only).

Each measured step is bracketed by ``start()`` / ``stop(n_items)``; both synchronize the device so
asynchronous CUDA kernels are counted in the step that launched them. The first ``warmup_steps``
steps (allocator growth, autotuning, compilation) are excluded. Normal training never synchronizes
for metering: the loop reports throughput from wall time between log steps.
"""
from __future__ import annotations

import resource
import time
from typing import Dict, List, Optional

import numpy as np
import torch

from runtime.devicecheck import expected_sync

PERCENTILES = (50, 90, 95, 99)


def synchronize(device) -> None:
    """Wait for the device (benchmark timing): an intended sync, allowed under MOLRECIPES_SYNC_DEBUG."""
    device = torch.device(device)
    if device.type == "cuda":
        with expected_sync("benchmark timing"):
            torch.cuda.synchronize(device)


def peak_memory_mb(device) -> float:
    """Peak memory: CUDA allocator peak on GPU; the process's peak resident set size on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


class PerformanceMeter:
    def __init__(self, device="cpu", warmup_steps: int = 10):
        self.device = torch.device(device)
        self.warmup_steps = warmup_steps
        self.seen = 0
        self.latencies: List[float] = []
        self.items: List[int] = []
        self._t0: Optional[float] = None

    def start(self) -> None:
        synchronize(self.device)
        self._t0 = time.perf_counter()

    def stop(self, n_items: int) -> float:
        """End the step started by :meth:`start`; returns its latency in seconds."""
        if self._t0 is None:
            raise RuntimeError("PerformanceMeter.stop() called without start()")
        synchronize(self.device)
        elapsed = time.perf_counter() - self._t0
        self._t0 = None
        self.seen += 1
        if self.seen > self.warmup_steps:
            self.latencies.append(elapsed)
            self.items.append(int(n_items))
        return elapsed

    def summary(self) -> Dict[str, float]:
        """Throughput (items/s) over measured steps and latency mean and percentiles in ms."""
        if not self.latencies:
            return {"steps": 0}
        lat = np.asarray(self.latencies)
        out = {"steps": len(lat), "throughput": float(sum(self.items) / lat.sum()),
               "latency_mean_ms": float(lat.mean() * 1e3)}
        for p in PERCENTILES:
            out[f"latency_p{p}_ms"] = float(np.percentile(lat, p) * 1e3)
        return out

    def log(self, logger, prefix: str = "train") -> Dict[str, float]:
        """Log ``{prefix}_throughput``, ``{prefix}_latency_{mean,p50,...}`` (ms) and ``{prefix}_steps``
        (the vocabulary's names; units come from runtime/vocabulary.py); returns :meth:`summary`."""
        stats = self.summary()
        data = {f"{prefix}_{k[:-3] if k.endswith('_ms') else k}": v for k, v in stats.items()}
        logger.log((), data)
        return stats
