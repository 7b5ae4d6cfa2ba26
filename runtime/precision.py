"""Mixed-precision policy shared by every recipe.

``--amp`` on CPU means bf16 autocast; on CUDA it means fp16 autocast with a GradScaler, or bf16
(no scaler) when asked. Without ``--amp`` everything runs in fp32.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Optional

import torch

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def set_tf32(enabled: bool) -> None:
    """Allow TF32 tensor-core math for matmuls and convolutions (Ampere+ GPUs)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


class Precision:
    """Autocast context, loss scaling and the optimizer step, in one object."""

    def __init__(self, amp: bool, device, dtype: Optional[str] = None):
        self.device = torch.device(device)
        self.enabled = bool(amp)
        if dtype not in (None, "fp16", "bf16"):
            raise ValueError(f"unknown AMP dtype {dtype!r}: choose fp16 or bf16")
        if self.device.type == "cpu":
            if dtype == "fp16" and self.enabled:
                raise ValueError("fp16 autocast is not supported on CPU: use --amp_dtype bf16 (the CPU default)")
            dtype = "bf16"
        else:
            dtype = dtype or "fp16"
        self.dtype = _DTYPES[dtype] if self.enabled else torch.float32
        use_scaler = self.enabled and self.device.type == "cuda" and self.dtype == torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None

    def __repr__(self) -> str:
        return f"Precision(enabled={self.enabled}, device={self.device.type}, dtype={self.dtype}, scaler={self.scaler is not None})"

    def autocast(self, cache_enabled: bool = True):
        """Autocast context (a no-op without AMP). ``cache_enabled=False`` is what
        ``torch.cuda.make_graphed_callables`` needs when graphed callables run under autocast."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype, cache_enabled=cache_enabled)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, params: Optional[Iterable[torch.Tensor]] = None,
             clip_norm: Optional[float] = None) -> Optional[torch.Tensor]:
        """Unscale, clip (when ``clip_norm``), step and update the scale. Returns the grad norm."""
        norm = None
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        if clip_norm is not None and clip_norm > 0:
            if params is None:
                params = [p for group in optimizer.param_groups for p in group["params"]]
            norm = torch.nn.utils.clip_grad_norm_(params, clip_norm)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        return norm

    def state_dict(self) -> dict:
        return {"scaler": self.scaler.state_dict()} if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
