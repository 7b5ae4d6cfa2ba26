"""Degree-wise linear map (channel mixing only, so it commutes with rotations)."""
from __future__ import annotations

import math
from typing import Dict

import torch
from torch import Tensor, nn

from se3_transformer.model.fiber import Fiber


class LinearSE3(nn.Module):
    """``out[d] = W_d @ in[d]`` for every degree ``d`` of ``fiber_out`` (which ``fiber_in`` must have)."""

    def __init__(self, fiber_in: Fiber, fiber_out: Fiber):
        super().__init__()
        missing = [d for d in fiber_out.degrees if d not in fiber_in]
        if missing:
            raise ValueError(f"LinearSE3: output degrees {missing} are absent from the input {fiber_in}")
        self.weights = nn.ParameterDict({
            str(d): nn.Parameter(torch.randn(c, fiber_in[d]) / math.sqrt(fiber_in[d])) for d, c in fiber_out})

    def forward(self, features: Dict[int, Tensor]) -> Dict[int, Tensor]:
        return {int(d): w @ features[int(d)] for d, w in self.weights.items()}
