"""CUDA graphs: the rules this project follows, and the two helpers it uses.

- Training graphs the *model* (``torch.cuda.make_graphed_callables``: forward and backward), and
  keeps the optimizer step eager: the GradScaler reads its inf check on the host and the optimizers
  are not created capturable, so a whole-step capture would fail or be wrong.
- A graphed backward returns detached *views of static buffers* as gradients. With gradient
  accumulation, AccumulateGrad would keep the first one as ``p.grad`` and the next replay would
  overwrite it in place, accumulating ``2 * g_last`` instead of ``g1 + g2``. So while graphed with
  accumulation, gradients are never None (:func:`materialize_grads`, ``zero_grad(set_to_none=False)``):
  AccumulateGrad then adds into our own buffers.
- Inference steps are captured whole with :func:`capture_inference` (no optimizer, no host reads).
- Every CUDA-only entry raises :class:`~runtime.errors.ConfigError` on CPU (:func:`require_cuda_graphs`).
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch

from runtime.errors import ConfigError


def require_cuda_graphs(device) -> None:
    """Raise a clear error when CUDA graphs cannot be used on ``device``."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise ConfigError("--cuda_graphs needs a CUDA device; this run is on "
                          f"{device.type}. Drop --cuda_graphs to run without graph capture.")


def materialize_grads(params: Iterable[torch.nn.Parameter]) -> None:
    """Give every parameter a zero gradient buffer where it has none (see the module rules)."""
    for p in params:
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)


class GraphedStep:
    """A captured inference step: copy new inputs into the static tensors, replay, return static outputs.

    The outputs are the graph's static buffers: the next replay overwrites them, so consume (or
    clone) them before calling again.
    """

    def __init__(self, graph: "torch.cuda.CUDAGraph", static_inputs: Sequence[torch.Tensor], static_outputs):
        self.graph = graph
        self.static_inputs = tuple(static_inputs)
        self.static_outputs = static_outputs

    def __call__(self, *inputs: torch.Tensor):
        if len(inputs) != len(self.static_inputs):
            raise ValueError(f"graphed step takes {len(self.static_inputs)} inputs, got {len(inputs)}")
        for static, new in zip(self.static_inputs, inputs):
            if static.shape != new.shape:
                raise ValueError(f"graphed step input shape changed from {tuple(static.shape)} to "
                                 f"{tuple(new.shape)}; CUDA graphs need fixed shapes (pad the batch)")
            static.copy_(new, non_blocking=True)
        self.graph.replay()
        return self.static_outputs


@torch.no_grad()
def capture_inference(fn: Callable, example_inputs: Sequence[torch.Tensor], warmup_iters: int = 3) -> GraphedStep:
    """Warm ``fn(*inputs)`` up on a side stream (lazy allocations, cuDNN autotuning happen outside the
    graph), then capture it once. ``fn`` must be free of host synchronisation (no ``.item()``,
    no data-dependent shapes); randomness is allowed (CUDA graphs are RNG-safe in PyTorch)."""
    if not example_inputs:
        raise ValueError("capture_inference needs at least one input tensor")
    require_cuda_graphs(example_inputs[0].device)
    static_inputs = [t.clone() for t in example_inputs]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup_iters):
            fn(*static_inputs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_outputs = fn(*static_inputs)
    return GraphedStep(graph, static_inputs, static_outputs)
