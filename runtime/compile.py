"""``--compile``: torch.compile a module or a step function, or leave it unchanged.

The backend is inductor unless ``MOLRECIPES_COMPILE_BACKEND`` names another (the test suite sets
``eager``: Dynamo still traces every compiled path, without minutes of code generation on CPU).

``@eager`` marks a function torch.compile must not trace, as ``torch.compiler.disable`` does; but
that decorator imports ``torch._dynamo`` when the module is imported (seconds, doubling the start-up
of a run that never compiles). ``eager`` applies it in :func:`maybe_compile`, before anything is
compiled.
"""
import functools
import os
from typing import Any, Callable, List

import torch

_EAGER: List[Callable] = []


def eager(fn: Callable) -> Callable:
    """``torch.compiler.disable(fn)`` from the first :func:`maybe_compile` on (see the module docstring)."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        return run.target(*args, **kwargs)

    run.target = fn
    _EAGER.append(run)
    return run


def maybe_compile(module_or_fn: Any, enabled: bool, **kwargs) -> Any:
    if not enabled:
        return module_or_fn
    if not hasattr(torch, "compile"):
        raise RuntimeError("--compile needs torch.compile (PyTorch >= 2.0)")
    for run in _EAGER:
        if run.target is run.__wrapped__:
            run.target = torch.compiler.disable(run.__wrapped__)
    backend = os.environ.get("MOLRECIPES_COMPILE_BACKEND")
    if backend and "backend" not in kwargs:
        kwargs["backend"] = backend
    return torch.compile(module_or_fn, **kwargs)
