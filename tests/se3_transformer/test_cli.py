"""End to end on the embedded sample: train (loss goes down), checkpoint, inference, DDP on gloo."""
import csv

import numpy as np
import pytest

from runtime.checkpoint import CheckpointError
from runtime.testing import run_distributed
from se3_transformer import inference, train

TINY = ["--num_layers", "1", "--num_degrees", "2", "--num_channels", "8", "--num_heads", "2", "--batch_size", "32",
        "--num_molecules", "200", "--silent", "--learning_rate", "3e-3", "--weight_decay", "0"]


def test_short_training_lowers_loss_then_inference_uses_checkpoint(tmp_path):
    ckpt = tmp_path / "model.pt"
    history = train.main(TINY + ["--epochs", "6", "--eval_interval", "3", "--log_dir", str(tmp_path / "train"),
                                 "--save_ckpt_path", str(ckpt)])
    assert history["train_loss"][-1] < 0.9 * history["train_loss"][0], history["train_loss"]
    assert ckpt.is_file() and len(history["val_mae"]) == 2
    assert np.isfinite(history["final_val_mae"]) and history["baseline_val_mae"] > 0

    out = tmp_path / "pred.csv"
    result = inference.main(["--load_ckpt_path", str(ckpt), "--num_molecules", "200", "--split", "val",
                             "--output", str(out), "--silent", "--log_dir", str(tmp_path / "infer")])
    assert result["mae"] == pytest.approx(history["final_val_mae"], rel=1e-5)
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == result["count"] == 27
    mae = np.mean([abs(float(r["homo_pred"]) - float(r["homo_true"])) for r in rows])
    assert mae == pytest.approx(result["mae"], rel=1e-3)

    # another fusion level and precomputed bases give the same predictions from the same checkpoint
    again = inference.main(["--load_ckpt_path", str(ckpt), "--num_molecules", "200", "--split", "val", "--silent",
                            "--fuse_level", "none", "--precompute_bases", "--log_dir", str(tmp_path / "infer2")])
    assert again["mae"] == pytest.approx(result["mae"], rel=1e-5)

    # resuming continues from the saved epoch
    resumed = train.main(TINY + ["--epochs", "7", "--eval_interval", "0", "--log_dir", str(tmp_path / "resume"),
                                 "--load_ckpt_path", str(ckpt)])
    assert len(resumed["train_loss"]) == 1


def test_amp_low_memory_benchmark_modes_run(tmp_path):
    stats = train.main(TINY + ["--benchmark", "--benchmark_warmup", "1", "--benchmark_steps", "2", "--amp",
                               "--low_memory", "--log_dir", str(tmp_path)])
    assert stats["steps"] == 2 and stats["throughput_mol_per_ms"] > 0 and stats["peak_memory_mb"] > 0


def test_bad_inputs_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="unknown task"):
        train.main(TINY + ["--epochs", "1", "--task", "nope", "--log_dir", str(tmp_path)])
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        inference.main(["--load_ckpt_path", str(bad), "--silent", "--log_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="load_ckpt_path is required"):
        inference.main(["--silent"])


def _ddp_train(rank, world_size, log_dir):
    return train.main(TINY + ["--epochs", "1", "--eval_interval", "1", "--log_dir", log_dir])


@pytest.mark.distributed
def test_ddp_two_processes_agree_on_synchronised_metrics(tmp_path):
    results = run_distributed(_ddp_train, 2, str(tmp_path))
    assert results[0]["final_val_mae"] == pytest.approx(results[1]["final_val_mae"], rel=1e-6)
    assert results[0]["train_loss"] == pytest.approx(results[1]["train_loss"], rel=1e-6)
