"""CUDA graph capture of a whole training or inference step with static inputs.

The step is run a few times on a side stream (so lazy allocations, cuDNN autotuning and the
optimizer's state initialisation happen outside the graph), then captured once. Replaying the graph
reruns every kernel of the step on whatever data was copied into the static input tensors.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch


def require_cuda_graphs(device) -> None:
    """Raise a clear error when CUDA graphs cannot be used on ``device``."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise RuntimeError("--cuda_graphs needs a CUDA device; this run is on "
                           f"{device.type}. Drop --cuda_graphs to run without graph capture.")


class GraphedStep:
    """A captured step: copy new inputs into the static tensors, replay, return static outputs."""

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


def capture_step(step_fn: Callable, static_inputs: Sequence[torch.Tensor], warmup_iters: int = 3) -> GraphedStep:
    """Warm ``step_fn(*static_inputs)`` up on a side stream, then capture it into a CUDA graph.

    ``step_fn`` must do the whole step (forward, backward, optimizer step) on tensors that live
    across calls; the optimizer should be created with ``capturable=True`` when it supports it.
    """
    if not static_inputs:
        raise ValueError("capture_step needs at least one static input tensor")
    require_cuda_graphs(static_inputs[0].device)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup_iters):
            step_fn(*static_inputs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_outputs = step_fn(*static_inputs)
    return GraphedStep(graph, static_inputs, static_outputs)
