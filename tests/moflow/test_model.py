"""Invertibility and log-determinant checks for every MoFlow layer type and the whole model."""
import pytest
import torch
import torch.nn.functional as F

from moflow.config import ModelConfig
from moflow.model import MoFlow, initialize_actnorm
from moflow.model.glow import Glow, GlowStep, GraphFlowStep, GraphGlow
from moflow.model.layers import (ActNorm, AffineCoupling, GraphAffineCoupling, GraphConv, InvConv2d,
                                 InvConv2dLU, squeeze2d, unsqueeze2d)


@pytest.fixture(autouse=True)
def _float64_and_seed():
    """Tiny float64 models so inverse and Jacobian checks hold to ~1e-9."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(old)


def _perturb(module, scale=0.3):
    """Move every parameter away from its (often identity-like) initial value."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module.eval()


def _random_adj(b, n, e=4):
    codes = torch.randint(0, e, (b, n, n))
    codes = torch.triu(codes, 1) + torch.triu(codes, 1).transpose(1, 2)
    return F.one_hot(codes, e).permute(0, 3, 1, 2).double()


def _jacobian_logdet(fn, x):
    """log|det J| of fn at a single sample x (batch of one), by autograd."""
    flat = x.reshape(-1)
    jac = torch.autograd.functional.jacobian(lambda v: fn(v.reshape(x.shape)).reshape(-1), flat)
    return torch.linalg.slogdet(jac)[1]


IMAGE_LAYERS = {
    "actnorm": lambda: ActNorm(8),
    "invconv": lambda: InvConv2d(8),
    "invconv_lu": lambda: InvConv2dLU(8),
    "coupling": lambda: AffineCoupling(8, [6, 6]),
    "coupling_swap": lambda: AffineCoupling(8, [6], swap=True),
    "glow_step_lu": lambda: GlowStep(8, [6], conv_lu=1, swap=False),
    "glow": lambda: Glow(2, n_flow=3, n_block=2, fold=2, hidden=[6], conv_lu=2),
    "glow_conv": lambda: Glow(2, n_flow=2, n_block=1, fold=2, hidden=[6], conv_lu=0),
}


@pytest.mark.parametrize("name", sorted(IMAGE_LAYERS))
def test_image_layer_inverse_and_logdet(name):
    layer = _perturb(IMAGE_LAYERS[name]())
    shape = (3, 2, 4, 4) if name.startswith("glow") and name != "glow_step_lu" else (3, 8, 2, 2)
    x = torch.randn(shape)
    y, logdet = layer(x)
    assert y.shape == x.shape and logdet.shape == (3,)
    torch.testing.assert_close(layer.reverse(y), x, atol=1e-9, rtol=1e-9)
    for i in range(2):
        expected = _jacobian_logdet(lambda v: layer(v)[0], x[i:i + 1])
        torch.testing.assert_close(logdet[i], expected, atol=1e-8, rtol=1e-8)


def test_squeeze_roundtrip():
    x = torch.randn(2, 4, 6, 6)
    s = squeeze2d(x, 3)
    assert s.shape == (2, 36, 2, 2)
    torch.testing.assert_close(unsqueeze2d(s, 3), x)


GRAPH_LAYERS = {
    "actnorm_rows": lambda n, a: ActNorm(n, channel_dim=1),
    "graph_coupling": lambda n, a: GraphAffineCoupling(n, a, [5], [7, 4], [1], 4),
    "graph_coupling_2rows": lambda n, a: GraphAffineCoupling(n, a, [5, 5], [4], [3, 0], 4),
    "graph_step": lambda n, a: GraphFlowStep(n, a, [5], [4], [2], 4),
    "graph_glow": lambda n, a: GraphGlow(n, a, [5], [4], n_flow=4, n_block=2, mask_row_size=2,
                                         mask_row_stride=1, num_edge_types=4),
}


@pytest.mark.parametrize("name", sorted(GRAPH_LAYERS))
def test_graph_layer_inverse_and_logdet(name):
    n, a = 4, 3
    layer = _perturb(GRAPH_LAYERS[name](n, a))
    adj = _random_adj(3, n)
    x = torch.randn(3, n, a)
    if name == "actnorm_rows":
        fwd, rev = (lambda v: layer(v)), layer.reverse
    else:
        fwd, rev = (lambda v: layer(adj[:v.shape[0]], v)), (lambda v: layer.reverse(adj, v))
    y, logdet = fwd(x)
    torch.testing.assert_close(rev(y), x, atol=1e-9, rtol=1e-9)
    for i in range(2):
        single = (lambda v, i=i: layer(v)[0]) if name == "actnorm_rows" else \
            (lambda v, i=i: layer(adj[i:i + 1], v)[0])
        torch.testing.assert_close(logdet[i], _jacobian_logdet(single, x[i:i + 1]), atol=1e-8, rtol=1e-8)


def test_graph_coupling_only_changes_masked_rows():
    layer = _perturb(GraphAffineCoupling(5, 3, [4], [4], [2], 4))
    x = torch.randn(2, 5, 3)
    y, _ = layer(_random_adj(2, 5), x)
    keep = [0, 1, 3, 4]
    torch.testing.assert_close(y[:, keep], x[:, keep])
    assert not torch.allclose(y[:, 2], x[:, 2])


def test_graph_conv_matches_loop():
    conv = GraphConv(3, 5, 4)
    adj, h = _random_adj(2, 4), torch.randn(2, 4, 3)
    out = conv(adj, h)
    w = conv.edge_linear(h).view(2, 4, 5, 4)
    ref = conv.self_linear(h).clone()
    for b in range(2):
        for e in range(4):
            ref[b] += adj[b, e] @ w[b, :, :, e]
    torch.testing.assert_close(out, ref)


def _tiny_config(**kw):
    base = dict(max_nodes=4, num_atom_channels=3, b_n_flow=2, b_n_squeeze=2, b_hidden_ch=[6],
                b_conv_lu=1, a_n_flow=4, a_hidden_gnn=[5], a_hidden_lin=[6])
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("conv_lu", [0, 1, 2])
def test_moflow_forward_reverse_reconstructs(conv_lu):
    model = MoFlow(_tiny_config(b_conv_lu=conv_lu))
    adj = _random_adj(4, 4)
    x = F.one_hot(torch.randint(0, 3, (4, 4)), 3).double()
    assert initialize_actnorm(model, adj, x) > 0
    _perturb(model, 0.05)
    z_x, z_adj, ld_x, ld_adj = model(adj, x)  # eval mode: no dequantisation noise
    z = torch.cat([z_x.reshape(4, -1), z_adj.reshape(4, -1)], 1)
    adj_rec, x_rec = model.reverse(z)
    torch.testing.assert_close(adj_rec, adj)
    torch.testing.assert_close(x_rec, x, atol=1e-8, rtol=1e-8)
    # whole-model log-determinant equals the autograd Jacobian for one molecule
    ld_adj_ref = _jacobian_logdet(lambda v: model.bond_flow(v)[0], adj[:1])
    ld_x_ref = _jacobian_logdet(lambda v: model.atom_flow(adj[:1], v)[0], x[:1])
    torch.testing.assert_close(ld_adj[0], ld_adj_ref, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(ld_x[0], ld_x_ref, atol=1e-8, rtol=1e-8)


def test_actnorm_initialised_from_data_outside_forward():
    model = MoFlow(_tiny_config())
    adj = _random_adj(16, 4)
    x = F.one_hot(torch.randint(0, 3, (16, 4)), 3).double()
    act = model.bond_flow.blocks[0].steps[0].actnorm
    assert not bool(act.initialized)
    model.train()
    model(adj, x)  # forward alone never initialises
    assert not bool(act.initialized)
    initialize_actnorm(model, adj, x)
    assert bool(act.initialized)
    before = act.loc.clone()
    initialize_actnorm(model, adj * 0 + 5, x)  # second call is a no-op
    torch.testing.assert_close(act.loc, before)
    # after init, the first ActNorm output is standardised per channel on that batch
    torch.manual_seed(1)
    y, _ = act(squeeze2d(model.dequantize(adj), 2))
    assert y.transpose(0, 1).reshape(y.shape[1], -1).mean(1).abs().max() < 0.5


def test_nll_gradients_reach_prior_variance_and_are_finite():
    model = MoFlow(_tiny_config()).train()
    adj = _random_adj(8, 4)
    x = F.one_hot(torch.randint(0, 3, (8, 4)), 3).double()
    initialize_actnorm(model, adj, x)
    nll_x, nll_adj = model.nll(*model(adj, x))
    (nll_x + nll_adj).backward()
    assert torch.isfinite(nll_x) and torch.isfinite(nll_adj)
    assert model.ln_var.grad is not None and model.ln_var.grad.abs() > 0


def test_reverse_rejects_wrong_latent_shape():
    model = MoFlow(_tiny_config()).eval()
    with pytest.raises(ValueError, match="latent"):
        model.reverse(torch.randn(2, 7))


def test_config_rejects_bad_squeeze():
    with pytest.raises(ValueError, match="b_n_squeeze"):
        ModelConfig(max_nodes=9, b_n_squeeze=2)


# --- the speed-ups keep the math, the checkpoints and the caches honest ---------------------------

def _graph_coupling_full_rows(layer, adj, x):
    """The coupling as first written: every layer on all atom rows, then masked by ``update_mask``."""
    keep = 1 - layer.update_mask
    h = x * keep
    for conv, norm in zip(layer.convs, layer.conv_norms):
        b, n, _ = h.shape
        messages = conv.edge_linear(h).view(b, n, conv.out_dim, conv.num_edge_types)
        h = F.relu(norm(conv.self_linear(h) + torch.einsum("bemn,bnce->bmc", adj, messages)))
    logits, shift = layer.mlp(h).chunk(2, -1)
    y = x * keep + layer.update_mask * (x + shift) * torch.sigmoid(logits)
    return y, (layer.update_mask * F.logsigmoid(logits)).reshape(len(x), -1).sum(1)


@pytest.mark.parametrize("hidden_gnn,rows", [([5], [1]), ([5, 6], [3, 0]), ([6], [1, 2]), ([], [2])])
def test_graph_coupling_on_masked_rows_equals_full_rows(hidden_gnn, rows):
    import copy
    layer = _perturb(GraphAffineCoupling(4, 3, hidden_gnn, [7, 4], rows, 4)).train()
    ref = copy.deepcopy(layer)
    adj, x = _random_adj(5, 4), torch.randn(5, 4, 3)
    for _ in range(2):  # training mode: outputs, log-determinants, gradients and the rows' running statistics
        y, logdet = layer(adj, x)
        y_ref, logdet_ref = _graph_coupling_full_rows(ref, adj, x)
        torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(logdet, logdet_ref, atol=1e-12, rtol=1e-12)
        (y.square().sum() + logdet.sum()).backward()
        (y_ref.square().sum() + logdet_ref.sum()).backward()
    for (name, p), p_ref in zip(layer.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, atol=1e-10, rtol=1e-10, msg=name)
    for norm, norm_ref in zip([*layer.conv_norms, *layer.mlp], [*ref.conv_norms, *ref.mlp]):
        if isinstance(norm, torch.nn.BatchNorm1d):
            torch.testing.assert_close(norm.running_mean[rows], norm_ref.running_mean[rows])
            torch.testing.assert_close(norm.running_var[rows], norm_ref.running_var[rows])
            assert int(norm.num_batches_tracked) == int(norm_ref.num_batches_tracked) == 2
    layer.eval(), ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(layer(adj, x)[0], _graph_coupling_full_rows(ref, adj, x)[0], atol=1e-12, rtol=1e-12)


def test_graph_conv_rows_are_the_full_output_rows():
    conv = _perturb(GraphConv(3, 5, 4))
    adj, h = _random_adj(2, 4), torch.randn(2, 4, 3)
    rows = torch.tensor([3, 1])
    torch.testing.assert_close(conv(adj, h, rows), conv(adj, h)[:, rows])
    torch.testing.assert_close(conv(adj, h, slice(1, 3)), conv(adj, h)[:, 1:3])


def test_state_dict_keys_and_shapes_unchanged_since_11b8e8f():
    """Checkpoints written before the speed-ups still load: the same keys, shapes and dtypes."""
    import hashlib
    expected = {0: (115, "d9da57eca79c133a"), 1: (127, "68558cad6045df4f"), 2: (113, "90a084282c66b1a0")}
    torch.set_default_dtype(torch.float32)
    for conv_lu, (count, digest) in expected.items():
        state = MoFlow(_tiny_config(b_conv_lu=conv_lu)).state_dict()
        text = "\n".join(f"{k}:{tuple(v.shape)}:{v.dtype}" for k, v in state.items())
        assert (len(state), hashlib.sha256(text.encode()).hexdigest()[:16]) == (count, digest)


@pytest.mark.parametrize("cls", [InvConv2d, InvConv2dLU])
def test_inverse_weight_cache_is_never_stale(cls):
    layer, other = _perturb(cls(6)), _perturb(cls(6))
    y = torch.randn(2, 6, 3, 3)

    def fresh_inverse(module):
        w = module.weight if cls is InvConv2d else module.weight()
        return F.conv2d(y, torch.linalg.inv(w.detach())[:, :, None, None])

    with torch.no_grad():
        first = layer.reverse(y)
        cached = layer._inverse.value
        layer.reverse(y)
        assert layer._inverse.value is cached  # reused while the weights do not change
    torch.testing.assert_close(first, fresh_inverse(layer))
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.1)
    layer(y)[0].square().sum().backward()
    optimizer.step()
    with torch.no_grad():
        torch.testing.assert_close(layer.reverse(y), fresh_inverse(layer))  # after an optimizer step
        layer.load_state_dict(other.state_dict())
        torch.testing.assert_close(layer.reverse(y), fresh_inverse(other))  # after load_state_dict
        for p in layer.parameters():
            p.mul_(1.01)
        torch.testing.assert_close(layer.reverse(y), fresh_inverse(layer))  # after any in-place write
    assert layer.reverse(y).requires_grad  # with gradients on, the inverse is differentiated, not cached
    if cls is InvConv2d:
        with torch.no_grad():
            logdet = layer(y)[1]
        torch.testing.assert_close(logdet[0], 9 * torch.linalg.slogdet(layer.weight)[1])


def test_coupling_without_grad_matches_with_grad():
    """Sampling and evaluation (no autograd) fold the BatchNorms into the convolutions and change the
    memory layout; the numbers stay those of the plain modules, also after the weights change."""
    layer = _perturb(AffineCoupling(8, [6, 6])).float()
    x = torch.randn(3, 8, 3, 3, dtype=torch.float32)

    def check():
        y, logdet = layer(x)
        with torch.no_grad():
            y_ng, logdet_ng = layer(x)
            torch.testing.assert_close(layer.reverse(y_ng), x, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(y_ng, y.detach(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logdet_ng, logdet.detach(), atol=1e-5, rtol=1e-5)

    with torch.no_grad():
        for norm in layer.net:
            if isinstance(norm, torch.nn.BatchNorm2d):
                norm.running_mean.normal_()
                norm.running_var.uniform_(0.5, 2.0)
    check()
    with torch.no_grad():
        layer.net[0].weight.mul_(1.5)  # the folded weights follow the weights ...
    check()
    with torch.no_grad():
        layer.net[1].running_var.mul_(2.0)  # ... and the statistics
    check()
    layer.train()  # training mode without autograd (ActNorm initialisation) uses batch statistics
    with torch.no_grad():
        y_ng = layer(x)[0]
    torch.testing.assert_close(y_ng, layer(x)[0].detach(), atol=1e-5, rtol=1e-5)
