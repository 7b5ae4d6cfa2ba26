"""Exact resume at gp_size 1 (in-process, CPU float32): a run stopped at any checkpoint and resumed equals
an uninterrupted one -- step losses, validation metrics, weights, EMA weights and GemNet scale factors.

GemNet-T small (fitted scale factors) with ReduceLROnPlateau at patience 0, so the extra evaluation of
a stopped run would change the learning rate if it stepped the schedule. 16 training frames: 4
batches of 4 per epoch, 2 epochs = 8 optimizer steps. Stops are deterministic (--max_steps).
"""
import glob

import pytest
import torch

from graph_parallel import train
from tests.graph_parallel.gp_helpers import assert_same_tensors, checkpoint_tensors, epoch_records, step_losses, \
    tiny_dataset, train_args

RUN = ["--model", "gemnet_t", "--epochs", "2", "--lr_patience", "0", "--lr_factor", "0.5"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """Run A: two epochs without interruption, plain and with accumulation over 2 batches."""
    out = {}
    for name, extra in (("plain", []), ("accumulate", ["--accumulate_grad_batches", "2"])):
        directory = tmp_path_factory.mktemp(f"straight_{name}")
        result = train.main(train_args(data, directory, *RUN, *extra))
        out[name] = (directory, result)
    return out


def _same_run(a_dir, b_dir):
    losses_a, losses_b = step_losses(a_dir), step_losses(b_dir)
    assert losses_a and losses_b == losses_a
    assert epoch_records(b_dir)[1] == epoch_records(a_dir)[1]      # the last epoch's validation metrics
    assert_same_tensors(checkpoint_tensors(a_dir / "model.pt"), checkpoint_tensors(b_dir / "model.pt"))
    a, b = (torch.load(d / "model.pt", weights_only=True) for d in (a_dir, b_dir))
    assert b["scheduler"] == a["scheduler"]        # the plateau schedule saw the same (scheduled) evaluations
    assert b["optimizer"]["param_groups"] == a["optimizer"]["param_groups"]


@pytest.mark.parametrize("max_steps", [3, 4, 6])   # mid-epoch 0, end of epoch 0, mid-epoch 1
def test_stop_anywhere_and_resume_is_bit_identical(tmp_path, data, straight, max_steps):
    a_dir, a_result = straight["plain"]
    stopped = train.main(train_args(data, tmp_path, *RUN, "--max_steps", max_steps))
    assert stopped["stop_reason"] == "max_steps"
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert saved["extra"]["scale_factors"] == "fitted" and saved["extra"]["ema"]["n_averaged"] == max_steps
    resumed = train.main(train_args(data, tmp_path, *RUN, "--load_ckpt_path", tmp_path / "model.pt"))
    assert resumed["steps"] == a_result["steps"] == 8
    _same_run(a_dir, tmp_path)


def test_resume_from_a_mid_epoch_ckpt_steps_copy_with_accumulation(tmp_path, data, straight):
    a_dir, _ = straight["accumulate"]
    train.main(train_args(data, tmp_path, *RUN, "--accumulate_grad_batches", "2", "--ckpt_steps", "1",
                          "--keep_last", "5", "--max_steps", "3"))
    copy = sorted(glob.glob(str(tmp_path / "model_step*.pt")))[0]     # step 1: batch 2 of 4 of epoch 0
    position = torch.load(copy, weights_only=True)["position"]
    assert (position["epoch"], position["batch"], position["step"]) == (0, 2, 1)
    resume_dir = tmp_path / "resumed"
    resume_dir.mkdir()
    train.main(train_args(data, resume_dir, *RUN, "--accumulate_grad_batches", "2", "--load_ckpt_path", copy))
    assert {k: v for k, v in step_losses(resume_dir).items() if k > 1} == \
        {k: v for k, v in step_losses(a_dir).items() if k > 1}
    assert_same_tensors(checkpoint_tensors(a_dir / "model.pt"), checkpoint_tensors(resume_dir / "model.pt"))


def test_scale_factors_are_fitted_once_and_kept(tmp_path, data, straight):
    a_dir, _ = straight["plain"]
    state = torch.load(a_dir / "model.pt", weights_only=True)
    scales = {k: v for k, v in state["model"].items() if k.endswith(".scale")}
    assert len(scales) == 9 and any(float(v) != 1.0 for v in scales.values())
    for key, value in scales.items():      # constant through training, in the model and in the EMA
        assert torch.equal(state["extra"]["ema"][f"module.{key}"], value)
