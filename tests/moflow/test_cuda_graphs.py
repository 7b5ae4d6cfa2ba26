"""CUDA graphs with gradient accumulation: the graphed flows must accumulate the eager gradients.

Graphed backward passes return views of static buffers; without ``materialize_grads`` the second
micro-batch would overwrite the first one's gradient (``tests/runtime/test_precision_and_perf.py``
shows the aliasing on CPU). This runs the real MoFlow on CUDA, so it skips elsewhere.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

from moflow.config import ModelConfig
from moflow.model import MoFlow, MoFlowObjective, initialize_actnorm
from moflow.train import graph_flows_for_cuda
from runtime.cuda_graphs import materialize_grads


def _batch(seed, b=8, n=6, atoms=4):
    g = torch.Generator().manual_seed(seed)
    x = F.one_hot(torch.randint(0, atoms, (b, n), generator=g), atoms).float()
    codes = torch.triu(torch.randint(0, 4, (b, n, n), generator=g), 1)
    adj = F.one_hot(codes + codes.transpose(1, 2), 4).permute(0, 3, 1, 2).float()
    return adj.cuda(), x.cuda()


def _accumulated_grads(model, batches):
    objective = MoFlowObjective(model)
    for k, (adj, x) in enumerate(batches):
        torch.manual_seed(100 + k)                       # the same dequantisation noise in both runs
        loss, _, _ = objective(adj, x)
        (loss / len(batches)).backward()
    return [p.grad.detach().clone() for p in model.parameters()]


@pytest.mark.cuda
def test_graphed_flows_accumulate_the_eager_gradients():
    torch.manual_seed(0)
    config = ModelConfig(max_nodes=6, num_atom_channels=4, b_n_flow=2, b_n_squeeze=3, b_hidden_ch=[16],
                         b_conv_lu=1, a_n_flow=2, a_hidden_gnn=[8], a_hidden_lin=[8])
    model = MoFlow(config).cuda().train()
    batches = [_batch(1), _batch(2)]
    initialize_actnorm(model, *batches[0])
    eager = copy.deepcopy(model)
    expected = _accumulated_grads(eager, batches)
    graph_flows_for_cuda(model, *batches[0])
    assert "forward" in vars(model.atom_flow) and "forward" in vars(model.bond_flow)    # captured: forward replaced
    materialize_grads(model.parameters())
    got = _accumulated_grads(model, batches)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)
