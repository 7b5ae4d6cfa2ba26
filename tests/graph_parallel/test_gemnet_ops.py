"""GemNet's fused ScaledSiLU (custom autograd Functions) and the per-atom EdgeEmbedding projection
equal the plain formulations, with first and second derivatives (forces are trained through them)."""
import torch

from graph_parallel.models.gemnet import Dense, EdgeEmbedding, ScaledSiLU


def reference_silu(x):
    return torch.nn.functional.silu(x) * (1 / 0.6)


def test_scaled_silu_gradcheck_and_gradgradcheck():
    torch.manual_seed(0)
    x = (torch.randn(6, 5, dtype=torch.float64) * 3).requires_grad_()
    act = ScaledSiLU()
    assert torch.autograd.gradcheck(act, (x,))
    assert torch.autograd.gradgradcheck(act, (x,))


def test_scaled_silu_matches_autograd_silu_to_second_order():
    torch.manual_seed(1)
    x0 = torch.randn(40, 7, dtype=torch.float64) * 4
    w, v = torch.randn_like(x0), torch.randn_like(x0)
    results = []
    for fn in (ScaledSiLU(), reference_silu):
        x = x0.clone().requires_grad_()
        y = fn(x)
        (g,) = torch.autograd.grad((y * w).sum(), x, create_graph=True)
        (h,) = torch.autograd.grad((g * v).sum() + y.sum(), x)
        results.append((y.detach(), g.detach(), h))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_scaled_silu_without_grad():
    x = torch.randn(3, 4)
    with torch.no_grad():
        torch.testing.assert_close(ScaledSiLU()(x), reference_silu(x))


def test_edge_embedding_equals_concatenated_dense():
    torch.manual_seed(2)
    atoms, edges, a, e_in, out = 5, 12, 6, 4, 8
    emb = EdgeEmbedding(a, e_in, out).double()
    h = torch.randn(atoms, a, dtype=torch.float64, requires_grad=True)
    e = torch.randn(edges, e_in, dtype=torch.float64, requires_grad=True)
    src, tgt = torch.randint(0, atoms, (edges,)), torch.randint(0, atoms, (edges,))
    y = emb(h, e, src, tgt)
    dense: Dense = emb.dense
    ref = dense(torch.cat([h[src], h[tgt], e], dim=-1))
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(y)
    grads = torch.autograd.grad((y * w).sum(), (h, e, dense.linear.weight))
    refs = torch.autograd.grad((ref * w).sum(), (h, e, dense.linear.weight))
    for a_, b_ in zip(grads, refs):
        torch.testing.assert_close(a_, b_, rtol=1e-12, atol=1e-12)
