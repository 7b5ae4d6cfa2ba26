"""Exact resume on CPU float32: a run stopped at any checkpoint and resumed equals an uninterrupted one.

Stops are deterministic (--max_steps, --ckpt_steps copies, a shorter --epochs), never --max_minutes.
40 embedded molecules: 31 train -> 4 batches of 8 per epoch.
"""
import glob

import pytest
import torch

from runtime.errors import CheckpointError
from se3_transformer import train
from tests.se3_transformer.helpers import epoch_records, step_losses, train_args, weights

EPOCHS = ["--epochs", "2", "--log_interval", "1", "--eval_interval", "1"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """Run A: two epochs without interruption (plain, and with accumulation over 2 batches)."""
    out = {}
    for name, extra in (("plain", []), ("accumulate", ["--accumulate_grad_batches", "2"])):
        directory = tmp_path_factory.mktemp(f"straight_{name}")
        result = train.main(train_args(directory, *EPOCHS, *extra))
        out[name] = (directory, result)
    return out


def _same_run(a_dir, b_dir, resumed_in_last_epoch: bool = False):
    assert step_losses(b_dir) == step_losses(a_dir)
    a_last, b_last = epoch_records(a_dir)[1], epoch_records(b_dir)[1]
    if resumed_in_last_epoch:  # the epoch's mean train loss then covers only the batches after the resume
        a_last.pop("train_loss"), b_last.pop("train_loss")
    assert b_last == a_last  # the last epoch's train loss and validation metrics
    wa, wb = weights(a_dir / "model.pt"), weights(b_dir / "model.pt")
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), f"{key} differs after resume"


@pytest.mark.parametrize("max_steps", [
    3,  # mid-epoch stop (3 of 4 batches of epoch 0)
    6,  # mid-epoch stop in epoch 1
    4,  # stop exactly at the end of epoch 0
])
def test_stop_anywhere_and_resume_is_bit_identical(tmp_path, straight, max_steps):
    a_dir, a_result = straight["plain"]
    stopped = train.main(train_args(tmp_path, *EPOCHS, "--max_steps", max_steps))
    assert stopped["stop_reason"] == "max_steps"
    resumed = train.main(train_args(tmp_path, *EPOCHS, "--load_ckpt_path", tmp_path / "model.pt"))
    assert resumed["steps"] == a_result["steps"] == 8
    _same_run(a_dir, tmp_path, resumed_in_last_epoch=max_steps > 4)


def test_resume_from_a_mid_epoch_ckpt_steps_copy_with_accumulation(tmp_path, straight):
    a_dir, _ = straight["accumulate"]
    train.main(train_args(tmp_path, *EPOCHS, "--accumulate_grad_batches", "2", "--ckpt_steps", "1",
                          "--keep_last", "5", "--max_steps", "3"))
    copy = sorted(glob.glob(str(tmp_path / "model_step*.pt")))[0]  # step 1: batch 2 of 4 of epoch 0
    position = torch.load(copy, weights_only=True)["position"]
    assert (position["epoch"], position["batch"], position["step"]) == (0, 2, 1)
    resume_dir = tmp_path / "resumed"
    resume_dir.mkdir()
    (resume_dir / "log.json").write_text("".join(
        line for line in (tmp_path / "log.json").read_text().splitlines(keepends=True)
        if '"step": [0, 1]' in line))  # the log as it was when the copy was written
    train.main(train_args(resume_dir, *EPOCHS, "--accumulate_grad_batches", "2", "--load_ckpt_path", copy))
    _same_run(a_dir, resume_dir)


def test_issue_scenario_one_epoch_then_resume_for_the_second(tmp_path, straight):
    """Issue 8: same seed; A runs 2 epochs straight, B runs epoch 0 (--epochs 1), then resumes to 2."""
    a_dir, _ = straight["plain"]
    train.main(train_args(tmp_path, "--epochs", "1", "--log_interval", "1", "--eval_interval", "1"))
    train.main(train_args(tmp_path, *EPOCHS, "--load_ckpt_path", tmp_path / "model.pt"))
    _same_run(a_dir, tmp_path)


def test_task_mismatch_is_refused_unless_finetune(tmp_path, straight):
    a_dir, _ = straight["plain"]
    with pytest.raises(CheckpointError, match=r"task: checkpoint has 'homo', this run has 'lumo'.*--finetune"):
        train.main(train_args(tmp_path, *EPOCHS, "--task", "lumo", "--load_ckpt_path", a_dir / "model.pt"))
    result = train.main(train_args(tmp_path, "--epochs", "1", "--task", "lumo", "--finetune",
                                   "--load_ckpt_path", a_dir / "model.pt"))
    assert result["steps"] == 4  # a new schedule from position 0
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert saved["meta"]["task"] == "lumo"
    assert saved["extra"]["target_scaler"] != torch.load(a_dir / "model.pt", weights_only=True)["extra"][
        "target_scaler"]  # fitted on the new task


def test_other_mismatches_are_refused(tmp_path, straight):
    a_dir, _ = straight["plain"]
    ckpt = ["--load_ckpt_path", a_dir / "model.pt"]
    with pytest.raises(CheckpointError, match="num_layers: checkpoint has 1, this run has 2"):
        train.main(train_args(tmp_path, *EPOCHS, *ckpt, "--num_layers", "2"))
    with pytest.raises(CheckpointError, match="dataset: checkpoint has 'sample', this run has 'qm9pack'"):
        train.main(train_args(tmp_path, *EPOCHS, *ckpt, "--dataset", "qm9pack"))
    with pytest.raises(CheckpointError, match="--num_molecules 40, this run has 50"):
        train.main(train_args(tmp_path, *EPOCHS, *ckpt, "--num_molecules", "50"))


def test_mid_epoch_resume_with_another_batch_size_is_refused(tmp_path):
    train.main(train_args(tmp_path, *EPOCHS, "--max_steps", "2"))
    with pytest.raises(CheckpointError, match="mid-epoch.*--batch_size 8 on 1 process"):
        train.main(train_args(tmp_path, *EPOCHS, "--batch_size", "4", "--load_ckpt_path", tmp_path / "model.pt"))
