"""The fused layers of graph_parallel.models.common equal the unfused math, values and first and
second derivatives (forces are trained through them), and keep the modules' state_dict keys."""
import pytest
import torch
from torch import nn

from graph_parallel.models import build_model
from graph_parallel.models.common import FusedSiLU, pair_linear, parallel_linear


def _second_order(fn, inputs, params):
    """(y, dL/d inputs with create_graph, d(force-like loss)/d(inputs + params)) of fn(*inputs)."""
    y = fn(*inputs)
    w = torch.randn_like(y)
    grads = torch.autograd.grad((y * w).sum(), inputs, create_graph=True)
    loss = sum((g * torch.randn_like(g)).sum() for g in grads) + y.square().sum()
    return [y.detach(), *[g.detach() for g in grads], *torch.autograd.grad(loss, inputs + params)]


def _assert_all_close(a, b):
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scale", [1.0, 1 / 0.6])
def test_fused_silu_equals_autograd_silu(scale):
    x = (torch.randn(6, 5, dtype=torch.float64) * 3).requires_grad_()
    assert torch.autograd.gradgradcheck(FusedSiLU(scale), (x,))
    torch.manual_seed(0)
    fused = _second_order(FusedSiLU(scale), (x,), ())
    torch.manual_seed(0)
    ref = _second_order(lambda t: nn.functional.silu(t) * scale, (x,), ())
    _assert_all_close(fused, ref)


class _CountOps(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def test_fused_silu_training_step_evaluates_the_sigmoid_twice():
    """Forward, forces with create_graph, the loss' backward: two sigmoid evaluations (silu, sigmoid,
    silu_backward each make one), where the first fused version made five."""
    x = torch.randn(8, 4, requires_grad=True)
    with _CountOps() as ops:
        y = FusedSiLU(1 / 0.6)(x * 2.0)
        (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
        (g.square().sum() + y.square().sum()).backward()
    assert sum(ops.counts.get(op, 0) for op in ("silu", "sigmoid", "silu_backward")) == 2, ops.counts


def test_fused_silu_releases_its_input_after_the_create_graph_pass():
    """The create_graph graph keeps f'(x) and grad * f''(x) instead of x and grad: no more memory
    than autograd's silu; and a second create_graph pass, which would need x, raises."""
    import gc
    import weakref
    w = torch.randn(4, 4, requires_grad=True)
    inner = torch.randn(8, 4) @ w                  # an intermediate, kept only by the activation
    ref = weakref.ref(inner)
    y = FusedSiLU()(inner)
    del inner
    gc.collect()
    assert ref() is not None
    (g,) = torch.autograd.grad(y.sum(), w, create_graph=True, retain_graph=True)
    gc.collect()
    assert ref() is None
    with pytest.raises(RuntimeError, match="second create_graph"):
        torch.autograd.grad(y.sum(), w, create_graph=True)


@pytest.mark.parametrize("bias", [True, False])
def test_parallel_linear_equals_separate_linears(bias):
    torch.manual_seed(1)
    lins = [nn.Linear(7, n, bias=bias).double() for n in (5, 3, 4)]
    params = tuple(p for lin in lins for p in lin.parameters())
    x = torch.randn(11, 7, dtype=torch.float64, requires_grad=True)
    act = FusedSiLU()
    torch.manual_seed(2)
    fused = _second_order(lambda t: torch.cat(parallel_linear(t, *lins, act=act), -1), (x,), params)
    torch.manual_seed(2)
    ref = _second_order(lambda t: torch.cat([nn.functional.silu(lin(t)) for lin in lins], -1), (x,), params)
    _assert_all_close(fused, ref)


def test_parallel_linear_refuses_mixed_biases():
    with pytest.raises(ValueError, match="all linears with a bias or all without"):
        parallel_linear(torch.randn(2, 3), nn.Linear(3, 2), nn.Linear(3, 2, bias=False))


@pytest.mark.parametrize("bias", [True, False])
def test_pair_linear_equals_concatenated_linear(bias):
    torch.manual_seed(3)
    atoms, edges = 5, 13
    lin = nn.Linear(2 * 6 + 4, 8, bias=bias).double()
    h = torch.randn(atoms, 6, dtype=torch.float64, requires_grad=True)
    e = torch.randn(edges, 4, dtype=torch.float64, requires_grad=True)
    first, second = torch.randint(0, atoms, (edges,)), torch.randint(0, atoms, (edges,))
    torch.manual_seed(4)
    fused = _second_order(lambda h_, e_: pair_linear(h_, first, second, e_, lin), (h, e), tuple(lin.parameters()))
    torch.manual_seed(4)
    ref = _second_order(lambda h_, e_: lin(torch.cat([h_[first], h_[second], e_], -1)), (h, e),
                        tuple(lin.parameters()))
    _assert_all_close(fused, ref)


@pytest.mark.parametrize("name", ["dimenetpp", "gemnet_t", "gemnet_dt"])
def test_state_dict_keys_unchanged(name):
    """The fused layers read the separate modules' weights: checkpoints keep their keys and shapes."""
    model = build_model(name, "small")
    keys = set(model.state_dict())
    if name == "dimenetpp":
        expected = {"interactions.0.lin_ji.weight", "interactions.0.lin_kj.bias", "embedding.lin.weight"}
    else:
        expected = {"interactions.0.dense_ca.linear.weight", "interactions.0.triplet.dense_ba.linear.weight",
                    "interactions.0.triplet.up_projection_ac.linear.weight", "mlp_rbf_out.linear.weight"}
    assert expected <= keys
