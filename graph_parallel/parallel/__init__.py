"""Graph parallelism: differentiable collectives, graph partitioning and gradient synchronisation.

Process layout comes from :class:`runtime.distributed.ProcessGrid`: consecutive ranks form a
graph-parallel (gp) group that shares one batch and splits its graph; ranks at the same gp position
form a data-parallel (dp) group.

Gradient scale. Every gp rank evaluates the same loss L from the all-reduced energies and forces,
so the group as one computation optimises gp_size * L, and each rank's parameter gradient is its
part of that. The gradient of the mean loss over the dp groups is therefore the sum of the rank
gradients over the whole world divided by gp_size * dp_size = world size: an all-reduce MEAN over
the world (:func:`sync_gradients`), exactly what DDP over the world would do.
"""
from typing import Iterable

import torch

from runtime.distributed import all_reduce_mean, get_world_size

from graph_parallel.parallel.collectives import all_reduce, gather, group_rank_and_size, reduce_scatter, split
from graph_parallel.parallel.partition import (GraphPartition, even_split, incoming_triplets, partition_graph,
                                               reverse_edges, shared_target_triplets)


def sync_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Average gradients over the world (one flat all-reduce); a missing grad counts as zeros."""
    if get_world_size() == 1:
        return
    params = [p for p in parameters if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if not params:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    all_reduce_mean(flat)
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset: offset + n].view_as(p.grad))
        offset += n


__all__ = ["all_reduce", "gather", "reduce_scatter", "split", "group_rank_and_size", "GraphPartition",
           "even_split", "incoming_triplets", "partition_graph", "reverse_edges", "shared_target_triplets", "sync_gradients"]
