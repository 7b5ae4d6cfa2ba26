"""``--compile``: torch.compile a module or a step function, or leave it unchanged.

The backend is inductor unless ``MOLRECIPES_COMPILE_BACKEND`` names another (the test suite sets
``eager``: Dynamo still traces every compiled path, without minutes of code generation on CPU).
"""
import os
from typing import Any

import torch


def maybe_compile(module_or_fn: Any, enabled: bool, **kwargs) -> Any:
    if not enabled:
        return module_or_fn
    if not hasattr(torch, "compile"):
        raise RuntimeError("--compile needs torch.compile (PyTorch >= 2.0)")
    backend = os.environ.get("MOLRECIPES_COMPILE_BACKEND")
    if backend and "backend" not in kwargs:
        kwargs["backend"] = backend
    return torch.compile(module_or_fn, **kwargs)
