"""Graph readout of degree-0 features."""
from __future__ import annotations

from typing import Dict

from torch import Tensor, nn

from runtime.graph import scatter_max, scatter_mean


class GraphPooling(nn.Module):
    """Max or mean of the invariant (degree-0) node features of each graph: ``[B, C]``."""

    def __init__(self, pool: str = "max"):
        super().__init__()
        if pool not in ("max", "avg", "mean"):
            raise ValueError(f"unknown pooling {pool!r}: use 'max' or 'avg'")
        self.pool = pool

    def forward(self, features: Dict[int, Tensor], batch: Tensor, num_graphs: int) -> Tensor:
        scalars = features[0].squeeze(-1)
        if self.pool == "max":
            return scatter_max(scalars, batch, num_graphs)
        return scatter_mean(scalars, batch, num_graphs)
