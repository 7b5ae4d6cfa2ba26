"""Samplers and DataLoaders that resume mid-epoch and shard evaluation without duplicates.

===================  ===========================================================================
sampler              order of the indices one replica reads
===================  ===========================================================================
``EpochSampler``     training: a permutation seeded by ``seed + epoch`` (DistributedSampler's
                     order), padded by wrap-around (or trimmed with ``drop_last``) to a multiple of
                     the replicas, strided ``rank::replicas``. ``set_epoch(epoch, skip=k)`` starts
                     at this replica's k-th index: a resumed run never loads the skipped samples.
``ShardSampler``     evaluation: ``rank::replicas`` of ``0..n-1``, no padding, so every sample is
                     evaluated exactly once (shards may differ in length by one).
===================  ===========================================================================

A replica is a data-parallel rank: with graph parallelism, the ranks of one graph-parallel group
are one replica and share each batch (pass ``num_replicas=dp_size, rank=dp_rank``).
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from runtime.errors import ConfigError


class EpochSampler(Sampler[int]):
    def __init__(self, size: int, shuffle: bool = True, seed: int = 0, num_replicas: int = 1, rank: int = 0,
                 drop_last: bool = False):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        self.size, self.shuffle, self.seed = int(size), shuffle, int(seed)
        self.num_replicas, self.rank, self.drop_last = num_replicas, rank, drop_last
        per_replica = size // num_replicas if drop_last else math.ceil(size / num_replicas)
        self.num_samples = per_replica
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Read epoch ``epoch``'s order, starting after this replica's first ``skip`` indices."""
        if not 0 <= skip <= self.num_samples:
            raise ValueError(f"cannot skip {skip} of {self.num_samples} samples")
        self.epoch, self.skip = int(epoch), int(skip)

    def indices(self, epoch: int) -> torch.Tensor:
        """This replica's full index list for ``epoch`` (before skipping)."""
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch))
        else:
            order = torch.arange(self.size)
        total = self.num_samples * self.num_replicas
        if total > self.size:  # pad by wrapping around (several times for tiny datasets)
            order = order.repeat(math.ceil(total / max(self.size, 1)))
        return order[:total][self.rank::self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices(self.epoch)[self.skip:].tolist())

    def __len__(self) -> int:
        return self.num_samples - self.skip


class ShardSampler(Sampler[int]):
    def __init__(self, size: int, num_replicas: int = 1, rank: int = 0):
        self.size, self.num_replicas, self.rank = int(size), num_replicas, rank

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.num_replicas))


def check_batch_size(batch_size: int, size: int, replicas: int = 1, items: str = "samples") -> None:
    """Refuse a training batch larger than the training split: an epoch would be one batch of the
    whole split (MoFlow on QM9: 4.4 GB), which no recipe means. Every recipe calls this before
    building its model."""
    if batch_size * replicas > size:
        most = size // replicas
        hint = f"use --batch_size {most} or less" if most else "use fewer processes"
        raise ConfigError(f"--batch_size {batch_size} on {replicas} data-parallel process(es) asks for "
                          f"{batch_size * replicas} {items} per step, but the training split holds {size}; {hint}")


def make_loader(dataset: Dataset, batch_size: int, sampler: Sampler, collate_fn: Optional[Callable] = None,
                num_workers: int = 0, device=None, drop_last: bool = False) -> DataLoader:
    """A DataLoader with GPU-sensible settings: pinned memory on CUDA (copies can be non-blocking),
    persistent workers (no re-fork per epoch) and a prefetch of two batches per worker."""
    cuda = device is not None and torch.device(device).type == "cuda"
    kwargs = dict(persistent_workers=True, prefetch_factor=2) if num_workers > 0 else {}
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn,
                        num_workers=num_workers, pin_memory=cuda, drop_last=drop_last, **kwargs)
    if drop_last and len(sampler) >= 0 and getattr(sampler, "skip", 0) == 0 and len(loader) == 0:
        raise ConfigError(f"--batch_size {batch_size} is larger than the {len(sampler)} samples each process "
                          "reads per epoch: lower --batch_size or use more data")
    return loader
