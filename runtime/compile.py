"""``--compile``: torch.compile a module or a step function, or leave it unchanged."""
from typing import Any

import torch


def maybe_compile(module_or_fn: Any, enabled: bool, **kwargs) -> Any:
    if not enabled:
        return module_or_fn
    if not hasattr(torch, "compile"):
        raise RuntimeError("--compile needs torch.compile (PyTorch >= 2.0)")
    return torch.compile(module_or_fn, **kwargs)
