"""torchrun on 2 CPU processes (gloo): exact resume at gp_size 2, and predictions gathered over 2 data-parallel
ranks. The slow tests of the package (each launch pays Python + torch start-up on both ranks)."""
import numpy as np
import pytest
import torch

from graph_parallel import evaluate, predict
from tests.graph_parallel.gp_helpers import assert_same_tensors, checkpoint_tensors, epoch_records, step_losses, \
    tiny_dataset, torchrun, train_args

RUN = ["--model", "gemnet_t", "--epochs", "2", "--gp_size", "2"]


@pytest.fixture(scope="module")
def gp2_run(tmp_path_factory):
    """Run A: 2 epochs of GemNet-T small at gp_size 2 (scale factors fitted on rank 0 and broadcast, EMA)."""
    data = tiny_dataset(tmp_path_factory.mktemp("data"))
    out = tmp_path_factory.mktemp("straight")
    torchrun("graph_parallel.train", train_args(data, out, *RUN))
    return data, out


@pytest.mark.distributed
def test_gp2_stop_and_resume_is_bit_identical(tmp_path, gp2_run):
    data, a_dir = gp2_run
    torchrun("graph_parallel.train", train_args(data, tmp_path, *RUN, "--max_steps", "3"))     # stops mid-epoch 0
    position = torch.load(tmp_path / "model.pt", weights_only=True)["position"]
    assert (position["epoch"], position["batch"], position["step"]) == (0, 3, 3)
    torchrun("graph_parallel.train", train_args(data, tmp_path, *RUN, "--load_ckpt_path", tmp_path / "model.pt"))
    losses = step_losses(a_dir)
    assert len(losses) == 8 and step_losses(tmp_path) == losses
    assert epoch_records(tmp_path)[1] == epoch_records(a_dir)[1]
    assert_same_tensors(checkpoint_tensors(a_dir / "model.pt"), checkpoint_tensors(tmp_path / "model.pt"))


@pytest.mark.distributed
def test_predictions_over_two_data_parallel_ranks_equal_one_process(tmp_path, gp2_run):
    data, a_dir = gp2_run
    ckpt = a_dir / "model.pt"
    common = ["--load_ckpt_path", ckpt, "--dataset", data, "--batch_size", "1", "--silent"]
    torchrun("graph_parallel.predict", common + ["--output", tmp_path / "two.npz", "--log_dir", tmp_path / "two"])
    predict.main([str(a) for a in common + ["--output", tmp_path / "one.npz", "--log_dir", tmp_path / "one"]])
    two, one = np.load(tmp_path / "two.npz"), np.load(tmp_path / "one.npz")
    assert two["index"].tolist() == one["index"].tolist() == [0, 1, 2, 3]
    for key in ("sid", "natoms", "energy_target", "forces_target"):
        assert np.array_equal(two[key], one[key]), key
    np.testing.assert_allclose(two["energy"], one["energy"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(two["forces"], one["forces"], rtol=1e-4, atol=1e-5)
    # the gp_size 2 training run's last validation (EMA weights) == evaluate in one process
    metrics = evaluate.main([str(a) for a in ["--load_ckpt_path", ckpt, "--dataset", data, "--log_dir", tmp_path,
                                              "--silent"]])
    logged = epoch_records(a_dir)[1]
    for key in ("val_energy_mae", "val_forces_mae", "val_loss", "val_energy_mae_baseline_linref"):
        assert metrics[key] == pytest.approx(logged[key], rel=1e-4), key
