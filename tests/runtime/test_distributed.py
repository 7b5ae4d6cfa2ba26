"""DDP over 2 gloo processes equals single-process training on the merged batch; grid layout."""
import pytest
import torch
from torch import nn

from runtime import distributed as rd
from runtime.testing import run_distributed

pytestmark = pytest.mark.distributed

STEPS, PER_RANK = 3, 4


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1)).double()


def _data(step: int):
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(2 * PER_RANK, 5, generator=g, dtype=torch.float64)
    return x, x.sum(1, keepdim=True).sin()


def _ddp_worker(rank, world_size):
    model = rd.wrap_ddp(_model())
    assert isinstance(model, nn.parallel.DistributedDataParallel)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for step in range(STEPS):
        x, y = _data(step)
        shard = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        opt.zero_grad()
        nn.functional.mse_loss(model(x[shard]), y[shard]).backward()
        opt.step()
    return [p.detach().clone() for p in rd.unwrap(model).parameters()]


def test_ddp_two_ranks_match_each_other_and_single_process():
    per_rank = run_distributed(_ddp_worker, 2)
    for a, b in zip(*per_rank):
        assert torch.equal(a, b), "DDP ranks diverged"
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for step in range(STEPS):
        x, y = _data(step)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    for p, q in zip(model.parameters(), per_rank[0]):
        torch.testing.assert_close(p.detach(), q, rtol=1e-12, atol=1e-12)


def _broadcast_worker(rank, world_size):
    torch.manual_seed(rank)                       # a different initialisation on every rank
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    model[1].running_mean.normal_()
    rd.broadcast_module(model)
    return [t.detach().clone() for t in [*model.parameters(), *model.buffers()]]


def test_broadcast_module_gives_every_rank_rank_0s_parameters_and_buffers():
    first, second = run_distributed(_broadcast_worker, 2)
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ref[1].running_mean.normal_()
    for a, b, r in zip(first, second, [*ref.parameters(), *ref.buffers()]):
        assert torch.equal(a, b) and torch.equal(a, r.detach())


def _grid_worker(rank, world_size, gp_size):
    grid = rd.ProcessGrid(gp_size)
    t = torch.tensor([float(rank)])
    rd.all_reduce_sum(t, group=grid.gp_group)
    u = torch.tensor([float(rank)])
    rd.all_reduce_sum(u, group=grid.dp_group)
    mean = rd.all_reduce_mean(torch.tensor([float(rank)]))
    return dict(gp_ranks=grid.gp_ranks, dp_ranks=grid.dp_ranks, gp_rank=grid.gp_rank, dp_rank=grid.dp_rank,
                gp_sum=t.item(), dp_sum=u.item(), mean=mean.item())


def test_process_grid_groups_consecutive_ranks():
    out = run_distributed(_grid_worker, 4, 2)
    assert [o["gp_ranks"] for o in out] == [[0, 1], [0, 1], [2, 3], [2, 3]]
    assert [o["dp_ranks"] for o in out] == [[0, 2], [1, 3], [0, 2], [1, 3]]
    assert [o["gp_sum"] for o in out] == [1.0, 1.0, 5.0, 5.0]
    assert [o["dp_sum"] for o in out] == [2.0, 4.0, 2.0, 4.0]
    assert all(o["mean"] == 1.5 for o in out)


def test_single_process_helpers_are_noops(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    rd._ENV = None
    env = rd.init_distributed()
    assert (env.rank, env.world_size) == (0, 1) and rd.is_main_process()
    model = nn.Linear(2, 2)
    assert rd.wrap_ddp(model) is model
    t = torch.ones(2)
    assert torch.equal(rd.all_reduce_mean(t), torch.ones(2))
    grid = rd.ProcessGrid(1)
    assert grid.gp_size == grid.dp_size == 1 and grid.gp_group is None
    with pytest.raises(ValueError, match="gp_size"):
        rd.ProcessGrid(2)
    rd.shutdown()


def test_multi_process_env_without_master_fails_clearly(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    rd._ENV = None
    with pytest.raises(RuntimeError, match="MASTER_ADDR"):
        rd.init_distributed()
    rd._ENV = None
