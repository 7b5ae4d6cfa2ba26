"""Optimizers, schedulers, the shared CLI and the graph batch helpers."""
import argparse

import pytest
import torch

from runtime.cli import add_common_args
from runtime.graph import GraphBatch, scatter_max, scatter_mean, scatter_sum, segment_softmax
from runtime.optim import LAMB, make_optimizer, make_scheduler


def test_lamb_matches_hand_computed_first_step():
    w = torch.tensor([3.0, 4.0], requires_grad=True)
    opt = LAMB([w], lr=0.1, weight_decay=0.0, eps=0.0)
    w.grad = torch.tensor([1.0, -2.0])
    opt.step()
    # Step 1: bias-corrected m/sqrt(v) = sign(g); trust ratio ||w|| / ||sign(g)|| = 5 / sqrt(2).
    expected = torch.tensor([3.0, 4.0]) - 0.1 * (5 / 2 ** 0.5) * torch.tensor([1.0, -1.0])
    torch.testing.assert_close(w.detach(), expected)


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "lamb"])
def test_optimizers_minimize_a_quadratic(name):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(10))
    opt = make_optimizer(name, [w], lr=0.05)
    start = w.pow(2).sum().item()
    for _ in range(100):
        opt.zero_grad()
        w.pow(2).sum().backward()
        opt.step()
    assert w.pow(2).sum().item() < 0.1 * start
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("adagrad", [w], lr=0.1)


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_schedulers_warmup_step_plateau():
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=1.0)
    sched = make_scheduler("step", opt, warmup_steps=4, step_size=3, gamma=0.5)
    lrs = []
    for _ in range(10):
        lrs.append(sched.get_last_lr()[0])
        sched.step()
    assert lrs == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5]

    opt = torch.optim.SGD([w], lr=1.0)
    sched = make_scheduler("step", opt, step_size=2, gamma=0.5)
    for _ in range(4):
        sched.step()
    assert sched.get_last_lr()[0] == 0.25

    opt = torch.optim.SGD([w], lr=1.0)
    sched = make_scheduler("plateau", opt, warmup_steps=2, patience=0, factor=0.5)
    sched.step(), sched.step()
    assert sched.get_last_lr()[0] == 1.0
    sched.step(metric=1.0)
    sched.step(metric=2.0)  # no improvement with patience 0 -> halve
    assert sched.get_last_lr()[0] == 0.5
    sched.step()  # a per-step call after warm-up must not undo the plateau's reduction
    assert sched.get_last_lr()[0] == 0.5
    with pytest.raises(ValueError, match="step_size"):
        make_scheduler("step", opt)
    with pytest.raises(ValueError, match="unknown scheduler"):
        make_scheduler("cosine", opt)


def test_common_cli_flags_and_overrides():
    parser = add_common_args(argparse.ArgumentParser(), batch_size=240, epochs=3)
    args = parser.parse_args(["--amp", "--lr", "0.01", "--seed", "7"])
    assert (args.batch_size, args.epochs, args.learning_rate, args.seed, args.amp) == (240, 3, 0.01, 7, True)
    for flag in ("--data_dir", "--log_dir", "--save_ckpt_path", "--load_ckpt_path", "--benchmark",
                 "--cuda_graphs", "--compile", "--silent", "--wandb"):
        assert flag in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["--batch_size", "0"])
    with pytest.raises(TypeError, match="unknown defaults"):
        add_common_args(argparse.ArgumentParser(), batchsize=3)


def test_graph_batch_collate_and_scatter_ops():
    g1 = GraphBatch(pos=torch.zeros(2, 3), edge_index=torch.tensor([[0, 1], [1, 0]]), batch=torch.zeros(2, dtype=torch.long),
                    ptr=torch.tensor([0, 2]), node_feats=torch.ones(2, 4))
    g2 = GraphBatch(pos=torch.ones(3, 3), edge_index=torch.tensor([[0, 2], [1, 1]]), batch=torch.zeros(3, dtype=torch.long),
                    ptr=torch.tensor([0, 3]), node_feats=torch.zeros(3, 4))
    b = GraphBatch.collate([g1, g2])
    assert b.num_graphs == 2 and b.num_nodes == 5 and b.ptr.tolist() == [0, 2, 5]
    assert b.edge_index.tolist() == [[0, 1, 2, 4], [1, 0, 3, 3]]
    assert b.batch.tolist() == [0, 0, 1, 1, 1]
    assert b.rel_pos().shape == (4, 3)
    with pytest.raises(ValueError, match="edge_index"):
        GraphBatch(pos=torch.zeros(2, 3), edge_index=torch.zeros(3, 2, dtype=torch.long),
                   batch=torch.zeros(2, dtype=torch.long), ptr=torch.tensor([0, 2]))

    src = torch.tensor([[1.0], [2.0], [3.0], [-4.0]])
    index = torch.tensor([0, 0, 2, 2])
    assert scatter_sum(src, index, 3).flatten().tolist() == [3.0, 0.0, -1.0]
    assert scatter_mean(src, index, 3).flatten().tolist() == [1.5, 0.0, -0.5]
    assert scatter_max(src, index, 3).flatten().tolist() == [2.0, 0.0, 3.0]

    scores = torch.tensor([1000.0, 1001.0, 5.0, 0.0, -3.0])
    seg = torch.tensor([0, 0, 1, 2, 2])
    out = segment_softmax(scores, seg, 3)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:2], torch.softmax(torch.tensor([0.0, 1.0]), 0))
    assert out[2].item() == 1.0
    torch.testing.assert_close(scatter_sum(out, seg, 3), torch.ones(3))
    half = segment_softmax(scores.bfloat16(), seg, 3)
    assert half.dtype == torch.bfloat16 and torch.isfinite(half).all()
    rounded = segment_softmax(scores.bfloat16().float(), seg, 3)  # bf16 cannot tell 1000 from 1001
    torch.testing.assert_close(half.float(), rounded, atol=1e-2, rtol=1e-2)
