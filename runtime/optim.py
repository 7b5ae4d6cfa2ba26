"""Optimizers and learning-rate schedules of the recipes.

=======================  ==========================================================  ==================
schedule                 rate                                                        used by
=======================  ==========================================================  ==================
``Scheduler("step")``    linear warm-up over ``warmup_steps``, then times ``gamma``   graph_parallel
                         every ``step_size`` optimizer steps (stateful: checkpointed)  ``--scheduler step``
``Scheduler("plateau")`` linear warm-up, then ReduceLROnPlateau on the evaluation      graph_parallel
                         metric (stateful: checkpointed)                              (default)
``CosineSchedule``       per-epoch cosine with warm restarts times a linear warm-up:  SE(3)
                         a function of the position (no state to checkpoint)
=======================  ==========================================================  ==================

MoFlow trains at a constant rate, as its reference.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional, Tuple

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

OPTIMIZERS = ("adam", "adamw", "sgd", "lamb")
SCHEDULERS = ("step", "plateau")


class LAMB(Optimizer):
    """LAMB (You et al., 2019): Adam moments with a per-tensor trust ratio ||w|| / ||update||.

    Bias-corrected moments as in NVIDIA's FusedLAMB; weight decay is decoupled and added to the
    update before the trust ratio. Tensors with zero norm use a trust ratio of 1.
    """

    def __init__(self, params, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0, max_trust: float = 10.0):
        if lr <= 0:
            raise ValueError(f"LAMB learning rate must be positive, got {lr}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"LAMB betas must lie in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, max_trust=max_trust))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("LAMB does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                m_hat = exp_avg / (1 - beta1 ** state["step"])
                v_hat = exp_avg_sq / (1 - beta2 ** state["step"])
                update = m_hat / (v_hat.sqrt() + group["eps"])
                if group["weight_decay"] != 0:
                    update.add_(p, alpha=group["weight_decay"])
                w_norm, u_norm = p.norm(), update.norm()
                trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                trust = trust.clamp(max=group["max_trust"])
                p.add_(update * trust, alpha=-group["lr"])
        return loss


def make_optimizer(name: str, params: Iterable, lr: float, weight_decay: float = 0.0, momentum: float = 0.9,
                   betas: Tuple[float, float] = (0.9, 0.999), fused: Optional[bool] = None) -> Optimizer:
    """Adam/AdamW (fused kernels on CUDA), SGD with momentum, or LAMB.

    Not fused on CPU, although it is faster there (MoFlow qm9: 6 ms instead of 19 ms per step): the
    CPU fused kernel's results depended on the run (bit differences from the second step on, probably
    its vectorised loop and tensor alignment), which breaks bit-identical resume.
    """
    name = name.lower()
    params = list(params)
    if not params:
        raise ValueError("make_optimizer got no parameters to optimize")
    if name in ("adam", "adamw"):
        if fused is None:
            fused = all((p["params"][0] if isinstance(p, dict) else p).is_cuda for p in params[:1])
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=bool(fused) or None)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "lamb":
        return LAMB(params, lr=lr, betas=betas, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


class Scheduler:
    """One interface over the step decay and ReduceLROnPlateau, both after a linear warm-up: call
    ``step()`` after every optimizer step and ``step(metric)`` after every scheduled evaluation."""

    def __init__(self, name: str, optimizer: Optimizer, *, warmup_steps: int = 0, step_size: Optional[int] = None,
                 gamma: float = 0.1, patience: int = 5, factor: float = 0.8, min_lr: float = 0.0):
        name = name.lower()
        if name not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
        if name == "step" and not step_size:
            raise ValueError("the step schedule needs step_size")
        self.name = name
        self.optimizer = optimizer
        self.warmup_steps = warmup_steps

        def factor_at(step: int) -> float:
            if warmup_steps and step < warmup_steps:
                return (step + 1) / warmup_steps
            if name == "step":
                return gamma ** ((step - warmup_steps) // step_size)
            return 1.0

        self.lambda_lr = LambdaLR(optimizer, factor_at)
        self.plateau = (ReduceLROnPlateau(optimizer, mode="min", factor=factor, patience=patience, min_lr=min_lr)
                        if name == "plateau" else None)

    def step(self, metric: Optional[float] = None) -> None:
        if self.plateau is None:
            self.lambda_lr.step()
        elif self.lambda_lr.last_epoch < self.warmup_steps:
            if metric is None:  # warm-up advances per training step, not per evaluation
                self.lambda_lr.step()
        elif metric is not None:
            self.plateau.step(metric)

    def get_last_lr(self):
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"lambda": {k: v for k, v in self.lambda_lr.state_dict().items() if k != "lr_lambdas"},
                "plateau": self.plateau.state_dict() if self.plateau is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.lambda_lr.load_state_dict({**self.lambda_lr.state_dict(), **state["lambda"]})
        if self.plateau is not None and state.get("plateau") is not None:
            self.plateau.load_state_dict(state["plateau"])


def make_scheduler(name: str, optimizer: Optimizer, **kwargs) -> Scheduler:
    return Scheduler(name, optimizer, **kwargs)


class CosineSchedule:
    """NVIDIA's SE(3) schedule as a function of the position.

    ``lr(epoch, step) = (eta_min + (lr - eta_min) (1 + cos(pi (epoch mod epochs) / epochs)) / 2)
    * min(1, (step + 1) / warmup_steps)``: the rate ``CosineAnnealingWarmRestarts(T_0=epochs,
    eta_min)`` gives when stepped once per epoch, times a linear warm-up. It holds no state, so a
    resumed run (any position) sets exactly the rates an uninterrupted run had.
    """

    def __init__(self, optimizer: Optimizer, lr: float, min_lr: Optional[float], epochs: int,
                 warmup_steps: int = 0):
        self.optimizer, self.lr, self.epochs, self.warmup_steps = optimizer, lr, epochs, warmup_steps
        self.min_lr = lr / 10.0 if min_lr is None else min_lr

    def lr_at(self, epoch: int, step: int) -> float:
        t = (epoch % self.epochs) / self.epochs
        rate = self.min_lr + (self.lr - self.min_lr) * (1 + math.cos(math.pi * t)) / 2
        if self.warmup_steps:
            rate *= min(1.0, (step + 1) / self.warmup_steps)
        return rate

    def apply(self, epoch: int, step: int) -> None:
        """Set the rate of the optimizer step that follows ``step`` steps, in ``epoch``."""
        rate = self.lr_at(epoch, step)
        for group in self.optimizer.param_groups:
            group["lr"] = rate
