"""Deterministic seeding: at start-up every rank seeds from ``seed + rank``; the training loop reseeds
every step from (seed, rank, epoch, batch) with :func:`seed_step`."""
import random

import numpy as np
import torch


def seed_everything(seed: int, rank: int = 0) -> int:
    """Seed Python, NumPy and torch (CPU and CUDA) with ``seed + rank``; returns the seed used."""
    value = int(seed) + int(rank)
    random.seed(value)
    np.random.seed(value % (2**32))
    torch.manual_seed(value)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(value)
    return value


def step_seed(seed: int, rank: int, epoch: int, batch: int) -> int:
    """A 64-bit seed mixed from (seed, rank, epoch, batch) by NumPy's SeedSequence."""
    entropy = [int(seed) % 2**32, int(rank), int(epoch), int(batch)]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


def seed_step(seed: int, rank: int, epoch: int, batch: int) -> None:
    """Reseed Python, NumPy and torch (CPU and CUDA) for one training step.

    The randomness a step draws (dropout, dequantisation noise) then depends only on where the
    step is, not on what ran before it (evaluation, resumption, another number of workers), which
    is what makes a resumed run bit-identical to an uninterrupted one.
    """
    value = step_seed(seed, rank, epoch, batch)
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)
