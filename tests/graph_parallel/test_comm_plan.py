"""Backend choices of the graph-parallel collectives: the decision function, and the native
reduce-scatter path (NCCL's) run on gloo by faking the backend name, against the gloo path."""
import pytest
import torch

from graph_parallel.parallel import collectives
from graph_parallel.parallel.collectives import comm_plan
from runtime.testing import run_distributed


def test_comm_plan_upcasts_half_types_on_gloo_only_and_uses_native_reduce_scatter_elsewhere():
    for dtype in (torch.float16, torch.bfloat16):
        assert comm_plan("gloo", dtype) == (torch.float32, False)
        assert comm_plan("nccl", dtype) == (dtype, True)
    for dtype in (torch.float32, torch.float64):
        assert comm_plan("gloo", dtype) == (dtype, False)
        assert comm_plan("nccl", dtype) == (dtype, True)


def _worker(rank, world, sizes):
    import torch.distributed as dist

    group = dist.group.WORLD
    out = {"backend": collectives._backend(group)}
    n = sum(sizes)
    for label in ("gloo", "nccl"):
        collectives._backend = lambda g, _b=label: _b          # fake the backend name
        for dtype in (torch.float64, torch.bfloat16):
            z = torch.randn(n, 3, generator=torch.Generator().manual_seed(10 + rank), dtype=torch.float64)
            z = z.to(dtype).requires_grad_()
            r = collectives.reduce_scatter(z, sizes, group)
            (r.double() * torch.arange(1.0, 1 + 3 * r.shape[0], dtype=torch.float64).view(-1, 3)).sum().backward()
            out[label, dtype] = (r.detach(), z.grad)
    return out


@pytest.mark.distributed
@pytest.mark.parametrize("sizes", [(4, 3), (1, 0, 6)])
def test_native_reduce_scatter_path_equals_the_gloo_path(sizes):
    results = run_distributed(_worker, len(sizes), sizes)
    for res in results:
        assert res["backend"] == "gloo"
        for dtype in (torch.float64, torch.bfloat16):
            (a, ga), (b, gb) = res["gloo", dtype], res["nccl", dtype]
            assert a.dtype == b.dtype == dtype and a.shape == b.shape
            # bfloat16: gloo sums in float32, the native path in bfloat16 (NCCL's behaviour)
            tol = 1e-12 if dtype == torch.float64 else 0.05     # float64: summation order may differ
            torch.testing.assert_close(b.double(), a.double(), atol=tol, rtol=tol)
            torch.testing.assert_close(gb.double(), ga.double(), atol=0, rtol=0)
