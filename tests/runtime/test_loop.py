"""The shared loop driver: exact mid-epoch resume, accumulation, limits, non-finite losses, samplers."""
import math
import os

import pytest
import torch
from torch import nn
from torch.utils.data import DistributedSampler, TensorDataset

from runtime.checkpoint import load_checkpoint, save_checkpoint
from runtime.data import EpochSampler, ShardSampler, make_loader
from runtime.errors import NonFiniteError
from runtime.logging import read_dllogger, setup_logger
from runtime.loop import LoopConfig, Position, TrainLoop
from runtime.optim import make_optimizer, make_scheduler
from runtime.testing import run_distributed


def _dataset(n=40):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    return TensorDataset(x, x.sum(1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=g))


class _Recipe:
    """A toy recipe with every source of randomness a real one has: init, dropout, input noise."""

    def __init__(self, tmp, rank=0, world=1, nan_at_step=None):
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(6, 32), nn.Dropout(0.2), nn.ReLU(), nn.Linear(32, 1))
        self.ddp = self.model
        if world > 1:
            self.ddp = nn.parallel.DistributedDataParallel(self.model)
        self.opt = make_optimizer("adamw", self.model.parameters(), lr=1e-2, weight_decay=1e-2)
        self.sched = make_scheduler("step", self.opt, warmup_steps=2, step_size=5, gamma=0.7)
        self.path = os.path.join(tmp, "ckpt.pt")
        self.nan_at_step = nan_at_step
        self.dataset = _dataset()
        self.sampler = EpochSampler(len(self.dataset), shuffle=True, seed=5, num_replicas=world, rank=rank)
        self.loader = make_loader(self.dataset, 4, self.sampler)

    def forward_backward(self, batch, scale, position):
        x, y = batch
        x = x + 0.05 * torch.randn_like(x)  # "dequantisation" noise from the global RNG
        loss = (self.ddp(x) - y).pow(2).mean()
        if self.nan_at_step is not None and position.step >= self.nan_at_step:
            loss = loss * float("nan")
        (loss * scale).backward()
        return {"loss": loss.detach()}

    def optimizer_step(self, position):
        norm = nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.sched.step()
        return {"grad_norm": norm}

    def save(self, pos):
        save_checkpoint(self.path, self.model, self.opt, self.sched, position=pos.to_dict())

    def loop(self, logger, **config):
        cfg = LoopConfig(**{"epochs": 3, "log_interval": 1, "seed": 1, "progress": False, **config})
        return TrainLoop(cfg, self.loader, self.sampler, logger, forward_backward=self.forward_backward,
                         optimizer_step=self.optimizer_step, batch_items=lambda b: len(b[0]),
                         lr=lambda: self.opt.param_groups[0]["lr"], save=self.save,
                         evaluate=lambda epoch, scheduled: {"val_loss": 0.0})


def _train(tmp, resume_from=None, **config):
    recipe = _Recipe(tmp)
    pos = Position()
    if resume_from:
        info = load_checkpoint(resume_from, recipe.model, recipe.opt, recipe.sched)
        pos = Position.from_dict(info["position"])
    logger = setup_logger(tmp, silent=True, stdout=False, append=resume_from is not None)
    result = recipe.loop(logger, **config).run(pos)
    logger.close()
    losses = [(r["step"], r["data"]["train_loss"]) for r in read_dllogger(os.path.join(tmp, "log.json"))
              if r["type"] == "LOG" and len(r.get("step", [])) in (1, 2) and "train_loss" in r["data"]]
    return recipe.model, result, losses


@pytest.mark.parametrize("stop", [{"max_steps": 7}, {"max_steps": 8, "ckpt_steps": 3}])
def test_resume_mid_epoch_is_bit_identical(tmp_path, stop):
    straight, _, losses_a = _train(str(tmp_path / "a"), accumulate=2)
    _, first, _ = _train(str(tmp_path / "b"), accumulate=2, **stop)
    assert first["stop_reason"] == "max_steps" and first["position"].batch > 0, first  # stopped mid-epoch
    resumed, result, losses_b = _train(str(tmp_path / "b"), resume_from=str(tmp_path / "b" / "ckpt.pt"),
                                       accumulate=2)
    assert result["stop_reason"] == "epochs" and result["steps"] == 15  # 3 epochs x ceil(10 batches / 2)
    assert losses_b == losses_a  # every interval and epoch mean, the interrupted epoch's included
    for (name, p), q in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), f"{name} differs after resume"


def test_callbacks_receive_the_position_of_a_resumed_run(tmp_path):
    """10 batches an epoch, a step every 3 and at the epoch end; resumed after batch 6 and step 2."""
    recipe = _Recipe(str(tmp_path))
    seen = {"forward_backward": [], "optimizer_step": [], "end_epoch": []}
    forward_backward, optimizer_step = recipe.forward_backward, recipe.optimizer_step

    def record(name, pos):
        seen[name].append((pos.epoch, pos.batch, pos.step))

    recipe.forward_backward = lambda b, s, pos: (record("forward_backward", pos), forward_backward(b, s, pos))[1]
    recipe.optimizer_step = lambda pos: (record("optimizer_step", pos), optimizer_step(pos))[1]
    loop = recipe.loop(setup_logger(None, silent=True, stdout=False), epochs=2, accumulate=3)
    loop.end_epoch = lambda pos: record("end_epoch", pos)
    loop.run(Position(0, 6, 2))
    assert seen["forward_backward"] == [(0, 6, 2), (0, 7, 2), (0, 8, 2), (0, 9, 3)] + \
        [(1, b, 4 + b // 3) for b in range(10)]
    assert seen["optimizer_step"] == [(0, 9, 2), (0, 10, 3), (1, 3, 4), (1, 6, 5), (1, 9, 6), (1, 10, 7)]
    assert seen["end_epoch"] == [(0, 10, 4), (1, 10, 8)]


def test_skipped_batches_are_never_loaded(tmp_path):
    recipe = _Recipe(str(tmp_path))
    loaded = []
    dataset = recipe.dataset

    class Spy(torch.utils.data.Dataset):
        def __len__(self):
            return len(dataset)

        def __getitem__(self, i):
            loaded.append(i)
            return dataset[i]

    recipe.loader = make_loader(Spy(), 4, recipe.sampler)
    logger = setup_logger(None, silent=True, stdout=False)
    recipe.loop(logger, epochs=1).run(Position(0, 7, 7))
    assert sorted(loaded) == sorted(recipe.sampler.indices(0)[28:].tolist())  # only the last 3 batches


def test_nonfinite_loss_stops_before_any_checkpoint(tmp_path):
    recipe = _Recipe(str(tmp_path), nan_at_step=3)
    logger = setup_logger(None, silent=True, stdout=False)
    with pytest.raises(NonFiniteError, match="NaN or infinite in 1 batch"):
        recipe.loop(logger, epochs=3, log_interval=4, ckpt_steps=2).run()
    state = torch.load(recipe.path, weights_only=True)
    assert state["position"]["step"] == 2  # the save at step 4 was refused
    assert all(torch.isfinite(v).all() for v in state["model"].values())


@pytest.mark.parametrize("world", [25, 29, 31, 41, 47, 49])
def test_one_nonfinite_batch_among_many_ranks_is_counted(tmp_path, monkeypatch, world):
    """This rank saw one NaN batch, the other ``world - 1`` ranks none: the all-reduced count must be 1
    (a float mean times the world size rounded it down to 0 at these sizes)."""
    import runtime.loop as loop

    monkeypatch.setattr(loop, "get_world_size", lambda group=None: world)
    monkeypatch.setattr(loop, "all_reduce_mean", lambda t, group=None: t.div_(world) if t.is_floating_point()
                        else t // world)                 # the other ranks add zeros
    monkeypatch.setattr(loop, "all_reduce_sum", lambda t, group=None: t, raising=False)
    recipe = _Recipe(str(tmp_path))
    calls, plain = [], recipe.forward_backward

    def forward_backward(batch, scale, position):    # the third batch's loss (only) is NaN
        out = plain(batch, scale, position)
        calls.append(1)
        return {"loss": out["loss"] * float("nan")} if len(calls) == 3 else out

    recipe.forward_backward = forward_backward
    logger = setup_logger(None, silent=True, stdout=False)
    with pytest.raises(NonFiniteError, match="NaN or infinite in 1 batch"):
        recipe.loop(logger, epochs=1, log_interval=5).run()


def test_time_limit_stops_and_saves(tmp_path):
    recipe = _Recipe(str(tmp_path))
    logger = setup_logger(None, silent=True, stdout=False)
    result = recipe.loop(logger, epochs=100, max_minutes=1e-9).run()
    assert result["stop_reason"] == "max_minutes" and result["steps"] == 1
    position = torch.load(recipe.path, weights_only=True)["position"]
    assert (position["epoch"], position["batch"], position["step"]) == (0, 1, 1)
    assert position["sums"]["epoch"]["count"] == 1  # the interrupted epoch's running mean travels along


def test_epoch_sampler_matches_distributed_sampler_and_shards_cover_once():
    data = list(range(23))
    for world, drop_last in ((1, False), (3, False), (3, True)):
        for rank in range(world):
            ours = EpochSampler(len(data), True, seed=4, num_replicas=world, rank=rank, drop_last=drop_last)
            ref = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=4, drop_last=drop_last)
            ours.set_epoch(2)
            ref.set_epoch(2)
            assert list(ours) == list(ref)
            ours.set_epoch(2, skip=5)
            assert list(ours) == list(ref)[5:] and len(ours) == len(ref) - 5
    shards = [list(ShardSampler(23, 3, r)) for r in range(3)]
    assert sorted(sum(shards, [])) == data


def _two_rank_loop(rank, world, tmp, stop_at):
    recipe = _Recipe(tmp, rank, world)
    pos = Position()
    if stop_at is None and os.path.exists(recipe.path):
        info = load_checkpoint(recipe.path, recipe.model, recipe.opt, recipe.sched)
        pos = Position.from_dict(info["position"])
    logger = setup_logger(None, silent=True, stdout=False)
    recipe.loop(logger, epochs=2, max_steps=stop_at, seed_rank=rank, replicas=world).run(pos)
    return {k: v.clone() for k, v in recipe.model.state_dict().items()}


def test_resumed_log_means_cover_the_whole_interval_and_epoch(tmp_path):
    _, _, losses_a = _train(str(tmp_path / "a"), log_interval=3)
    _train(str(tmp_path / "b"), log_interval=3, max_steps=4)  # stops between two log steps, mid-epoch
    _, _, losses_b = _train(str(tmp_path / "b"), resume_from=str(tmp_path / "b" / "ckpt.pt"), log_interval=3)
    assert losses_b == losses_a


def _straight_then_stop_and_resume(rank, world, tmp):
    straight = _two_rank_loop(rank, world, os.path.join(tmp, "a"), None)
    _two_rank_loop(rank, world, os.path.join(tmp, "b"), 3)
    return straight, _two_rank_loop(rank, world, os.path.join(tmp, "b"), None)


@pytest.mark.distributed
def test_two_rank_ddp_resume_is_bit_identical(tmp_path):
    results = run_distributed(_straight_then_stop_and_resume, 2, str(tmp_path))
    for rank, (straight, resumed) in enumerate(results):
        for name in straight:
            assert torch.equal(straight[name], resumed[name]), (rank, name)
    assert all(torch.equal(results[0][0][n], results[1][0][n]) for n in results[0][0])
    assert not math.isnan(float(results[0][0]["0.weight"].sum()))
