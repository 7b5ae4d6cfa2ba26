"""Differentiable collectives over a graph-parallel process group (dim 0 split into uneven chunks).

Gradient convention: the ranks of a graph-parallel group together form ONE computation, and every
collective's backward is the exact adjoint of its forward:

=================  =================================  ==========================================
function           forward                            backward
=================  =================================  ==========================================
``gather``         all-gather the ranks' chunks       reduce-scatter: sum over ranks, own chunk
``reduce_scatter`` sum over ranks, keep own chunk     all-gather
``all_reduce``     sum over ranks                     all-reduce (sum)
``split``          own chunk of a replicated tensor   own chunk's gradient, zeros elsewhere
=================  =================================  ==========================================

Backwards are written with these same Functions, so forces (``create_graph=True``) can be
differentiated again. Parameters are replicated, so each rank's parameter gradient is its part of
the total; see :func:`graph_parallel.parallel.sync_gradients` for the scale. ``sizes`` lists the
chunk length of every rank (uneven and zero-length chunks are fine). With no group or a group of
one rank every function is the identity.

Backend choices (:func:`comm_plan`, decided from the group's backend name): on gloo, float16 and
bfloat16 travel as float32 (gloo reduces them poorly) and ``reduce_scatter`` is an all-reduce
followed by the own slice (gloo has no reduce-scatter); on any other backend (NCCL) tensors travel
in their own dtype and ``reduce_scatter`` is the native one (``reduce_scatter_single``, formerly
``reduce_scatter_tensor``) over chunks padded to the largest one.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor


def _size(group) -> int:
    return 1 if group is None or not dist.is_initialized() else dist.get_world_size(group)


def _rank(group) -> int:
    return 0 if group is None or not dist.is_initialized() else dist.get_rank(group)


def comm_plan(backend: str, dtype: torch.dtype) -> Tuple[torch.dtype, bool]:
    """(dtype to communicate ``dtype`` in, whether to use the native reduce-scatter) on ``backend``."""
    gloo = str(backend).lower() == "gloo"
    upcast = gloo and dtype in (torch.float16, torch.bfloat16)
    return (torch.float32 if upcast else dtype), not gloo


def _backend(group) -> str:
    return dist.get_backend(group)


def _comm(x: Tensor, group) -> Tensor:
    return x.to(comm_plan(_backend(group), x.dtype)[0])


def _check_sizes(x: Tensor, sizes: Sequence[int], group, local: bool) -> None:
    if len(sizes) != _size(group):
        raise ValueError(f"got {len(sizes)} chunk sizes for a group of {_size(group)} ranks")
    expected = sizes[_rank(group)] if local else sum(sizes)
    if x.shape[0] != expected:
        raise ValueError(f"tensor has {x.shape[0]} rows, expected {expected} (sizes={list(sizes)})")


def _all_gather(x: Tensor, sizes: Sequence[int], group) -> Tensor:
    width = max(sizes)
    c = _comm(x, group)
    buf = c.new_zeros((width, *x.shape[1:]))
    buf[: x.shape[0]] = c
    parts = [torch.empty_like(buf) for _ in sizes]
    dist.all_gather(parts, buf.contiguous(), group=group)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)]).to(x.dtype)


def _all_reduce(x: Tensor, group) -> Tensor:
    out = _comm(x, group).clone().contiguous()
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out.to(x.dtype)


def _reduce_scatter(x: Tensor, sizes: Sequence[int], group) -> Tensor:
    dtype, native = comm_plan(_backend(group), x.dtype)
    if not native:
        # gloo has no reduce_scatter: all-reduce, then keep the own chunk
        return _all_reduce(x, group)[_own_slice(sizes, group)].contiguous()
    width = max(sizes)
    padded = x.new_zeros((len(sizes), width, *x.shape[1:]), dtype=dtype)
    start = 0
    for r, n in enumerate(sizes):
        padded[r, :n] = x[start: start + n]
        start += n
    out = padded.new_empty((width, *x.shape[1:]))
    native_op = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor   # renamed in torch 2.1x
    native_op(out, padded.reshape(len(sizes) * width, *x.shape[1:]), op=dist.ReduceOp.SUM, group=group)
    return out[: sizes[_rank(group)]].to(x.dtype)


def _own_slice(sizes: Sequence[int], group) -> slice:
    r = _rank(group)
    start = sum(sizes[:r])
    return slice(start, start + sizes[r])


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, sizes, group):
        ctx.sizes, ctx.group = sizes, group
        return _all_gather(x, sizes, group)

    @staticmethod
    def backward(ctx, grad):
        return _ReduceScatter.apply(grad, ctx.sizes, ctx.group), None, None


class _ReduceScatter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, sizes, group):
        ctx.sizes, ctx.group = sizes, group
        return _reduce_scatter(x, sizes, group)

    @staticmethod
    def backward(ctx, grad):
        return _Gather.apply(grad, ctx.sizes, ctx.group), None, None


class _AllReduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _all_reduce(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _AllReduce.apply(grad, ctx.group), None


class _Split(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, sizes, group):
        ctx.sizes, ctx.group, ctx.rows = sizes, group, x.shape[0]
        return x[_own_slice(sizes, group)].clone()

    @staticmethod
    def backward(ctx, grad):
        own = _own_slice(ctx.sizes, ctx.group)
        before = grad.new_zeros((own.start, *grad.shape[1:]))
        after = grad.new_zeros((ctx.rows - own.stop, *grad.shape[1:]))
        return torch.cat([before, grad, after]), None, None


def gather(x: Tensor, sizes: Sequence[int], group=None) -> Tensor:
    """All-gather: every rank's ``[sizes[r], ...]`` chunk -> the ``[sum(sizes), ...]`` tensor."""
    if _size(group) == 1:
        return x
    _check_sizes(x, sizes, group, local=True)
    return _Gather.apply(x, tuple(sizes), group)


def reduce_scatter(x: Tensor, sizes: Sequence[int], group=None) -> Tensor:
    """Sum the ranks' ``[sum(sizes), ...]`` tensors and return this rank's chunk."""
    if _size(group) == 1:
        return x
    _check_sizes(x, sizes, group, local=False)
    return _ReduceScatter.apply(x, tuple(sizes), group)


def all_reduce(x: Tensor, group=None) -> Tensor:
    """Sum over the ranks of the group (e.g. per-structure energies from local atoms)."""
    if _size(group) == 1:
        return x
    return _AllReduce.apply(x, group)


def split(x: Tensor, sizes: Sequence[int], group=None) -> Tensor:
    """This rank's chunk of a tensor that every rank holds in full."""
    if _size(group) == 1:
        return x
    _check_sizes(x, sizes, group, local=False)
    return _Split.apply(x, tuple(sizes), group)


def group_rank_and_size(group: Optional[object]) -> tuple:
    return _rank(group), _size(group)
