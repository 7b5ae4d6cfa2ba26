"""Exponential moving average of a model's weights, for evaluation.

==============  ==================================================================================
concern         rule
==============  ==================================================================================
decay           after n updates, decay_n = min(decay, (1 + n) / (10 + n)) (the usual warm-up, so
                short runs are not dominated by the initial weights); the first update copies.
cost            the count is a host int and one ``torch._foreach_lerp_`` updates every floating
                parameter and buffer (integer buffers are copied): no host-device sync per step,
                unlike ``AveragedModel``, whose counter is a device tensor read once per parameter.
state           ``state_dict()`` is ``AveragedModel``'s layout as plain data: ``"module.<key>"``
                for every entry of the model's state_dict plus ``"n_averaged"`` (a 0-d int64
                tensor), so :func:`graph_parallel.checkpoints.model_from_checkpoint` and
                checkpoints written with ``AveragedModel`` read either way.
==============  ==================================================================================
"""
from __future__ import annotations

import copy
from typing import Dict, List, Mapping

import torch
from torch import Tensor, nn

from runtime.errors import CheckpointError


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.decay = float(decay)
        self.module = copy.deepcopy(model)
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.num_updates = 0

    @staticmethod
    def _tensors(model: nn.Module):
        """(floating tensors, other tensors) of a model: parameters then buffers, in registration order."""
        tensors = [p.data for p in model.parameters()] + list(model.buffers())
        return [t for t in tensors if t.is_floating_point()], [t for t in tensors if not t.is_floating_point()]

    def decay_at(self, n: int) -> float:
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold ``model``'s current weights into the average."""
        avg_float, avg_other = self._tensors(self.module)
        cur_float, cur_other = self._tensors(model)
        if self.num_updates == 0:
            torch._foreach_copy_(avg_float, cur_float)
        else:
            torch._foreach_lerp_(avg_float, cur_float, 1.0 - self.decay_at(self.num_updates))
        for avg, cur in zip(avg_other, cur_other):
            avg.copy_(cur)
        self.num_updates += 1

    def state_dict(self) -> Dict[str, Tensor]:
        state = {f"module.{k}": v.detach().clone() for k, v in self.module.state_dict().items()}
        state["n_averaged"] = torch.tensor(self.num_updates, dtype=torch.long)
        return state

    def load_state_dict(self, state: Mapping[str, Tensor], where: str = "checkpoint") -> None:
        weights = {k[len("module."):]: v for k, v in state.items() if k.startswith("module.")}
        own = self.module.state_dict()
        if set(weights) != set(own) or "n_averaged" not in state:
            raise CheckpointError(f"{where}: its EMA state does not match the model (missing "
                                  f"{sorted(set(own) - set(weights))[:5]}, unexpected "
                                  f"{sorted(set(weights) - set(own))[:5]})")
        self.module.load_state_dict(weights)
        self.num_updates = int(state["n_averaged"])

    def parameters(self) -> List[Tensor]:
        return list(self.module.parameters())
