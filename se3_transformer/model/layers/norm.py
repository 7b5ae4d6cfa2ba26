"""Norm-based equivariant nonlinearity: only the norms of each degree's vectors are transformed."""
from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor, nn

from se3_transformer.model.fiber import Fiber


class NormSE3(nn.Module):
    """``out = feature / |feature| * ReLU(Norm(|feature|))`` per degree and channel.

    When all degrees have the same channel count the per-degree layer norms are fused into a
    single group norm over the concatenated norms (one group per degree), otherwise one layer norm
    per degree is used.
    """

    NORM_CLAMP = 2 ** -24  # smallest positive fp16 subnormal: keeps feature / norm finite

    def __init__(self, fiber: Fiber):
        super().__init__()
        self.fiber = fiber
        self.activation = nn.ReLU()
        if fiber.unique_channels is not None:
            self.group_norm = nn.GroupNorm(num_groups=len(fiber), num_channels=sum(fiber.channels))
        else:
            self.layer_norms = nn.ModuleDict({str(d): nn.LayerNorm(c) for d, c in fiber})

    def forward(self, features: Dict[int, Tensor]) -> Dict[int, Tensor]:
        degrees = self.fiber.degrees
        norms = [features[d].norm(dim=-1, keepdim=True).clamp(min=self.NORM_CLAMP) for d in degrees]
        if hasattr(self, "group_norm"):
            fused = torch.cat(norms, dim=-2).squeeze(-1)
            new_norms = self.activation(self.group_norm(fused)).unsqueeze(-1).chunk(len(degrees), dim=-2)
        else:
            new_norms = [self.activation(self.layer_norms[str(d)](n.squeeze(-1))).unsqueeze(-1)
                         for d, n in zip(degrees, norms)]
        return {d: features[d] / n * new_n for d, n, new_n in zip(degrees, norms, new_norms)}
