"""Entry points end to end on the embedded sample: train, evaluate, predict, benchmark, DDP on gloo."""
import csv
import math

import numpy as np
import pytest
import torch

from runtime import vocabulary
from runtime.errors import ConfigError, run_main
from runtime.logging import read_dllogger
from runtime.optim import CosineSchedule
from runtime.testing import run_distributed
from se3_transformer import evaluate, predict, train
from tests.se3_transformer.helpers import epoch_records, log_records, random_batch, summary, train_args
from tests.se3_transformer.test_model import tiny_model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """6 epochs on 200 molecules (153 train / 27 val / 20 test), evaluated every 3 epochs."""
    out = tmp_path_factory.mktemp("trained")
    args = train_args(out, "--num_molecules", "200", "--batch_size", "32", "--epochs", "6", "--eval_interval", "3")
    return out, train.main(args)


def test_training_lowers_the_loss_and_logs_the_vocabulary(trained):
    out, result = trained
    epochs = epoch_records(out)
    assert epochs[5]["train_loss"] < 0.9 * epochs[0]["train_loss"]
    assert sorted(e for e, d in epochs.items() if "val_mae" in d) == [2, 5]
    start = summary(out)
    assert start["val_size"] == result["val_count"] == 27  # every validation molecule exactly once
    assert result["val_mae"] < start["val_mae_baseline_mean"]
    for record in log_records(out):
        for name in record["data"]:
            assert vocabulary.is_known("se3_transformer", name), name
    meta = {r["metric"]: r["metadata"] for r in read_dllogger(str(out / "log.json")) if r["type"] == "METADATA"}
    assert meta["val_mae"]["unit"] == "eV" and meta["val_mae_baseline_mean"]["unit"] == "eV"


def test_schedule_is_nvidias_per_epoch_cosine_with_warm_restarts():
    model = torch.nn.Linear(2, 1)
    reference_opt = torch.optim.SGD(model.parameters(), lr=0.002)
    reference = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(reference_opt, T_0=5, eta_min=0.0002)
    ours = CosineSchedule(torch.optim.SGD(model.parameters(), lr=0.002), 0.002, None, epochs=5)
    for epoch in range(12):  # past two restarts
        assert ours.lr_at(epoch, step=1000) == pytest.approx(reference.get_last_lr()[0], rel=1e-12, abs=0)
        reference_opt.step()
        reference.step()
    warm = CosineSchedule(reference_opt, 0.002, 1e-5, epochs=5, warmup_steps=4)
    assert [warm.lr_at(0, s) for s in range(5)] == pytest.approx([0.0005, 0.001, 0.0015, 0.002, 0.002])


def test_logged_learning_rate_follows_the_epoch_schedule(tmp_path):
    train.main(train_args(tmp_path, "--epochs", "3", "--log_interval", "1", "--learning_rate", "0.01"))
    rates = {}
    for r in log_records(tmp_path):
        if len(r["step"]) == 2:
            rates.setdefault(r["step"][0], []).append(r["data"]["lr"])
    expected = [0.001 + 0.009 * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3)]  # eta_min = lr / 10
    assert [rates[e] for e in range(3)] == [pytest.approx([v] * 4) for v in expected]


def test_evaluate_and_predict_use_the_checkpoint(trained, tmp_path):
    out, result = trained
    ckpt = str(out / "model.pt")
    scores = evaluate.main(["--load_ckpt_path", ckpt, "--split", "val", "--silent", "--log_dir", str(tmp_path / "e")])
    assert scores["val_mae"] == pytest.approx(result["val_mae"], rel=1e-6)
    assert scores["val_mae_baseline_mean"] == pytest.approx(result["val_mae_baseline_mean"], rel=1e-9)
    assert summary(tmp_path / "e", "evaluate_log.json")["val_mae"] == pytest.approx(scores["val_mae"])

    # NVIDIA's model flags are accepted when they agree; the kernels may change freely
    again = evaluate.main(["--load_ckpt_path", ckpt, "--split", "val", "--silent", "--norm", "true",
                           "--use_layer_norm", "true", "--num_layers", "1", "--fuse_level", "full",
                           "--precompute_bases", "true", "--log_dir", str(tmp_path / "e2")])
    assert again["val_mae"] == pytest.approx(scores["val_mae"], rel=1e-5)
    with pytest.raises(ConfigError, match="--num_layers 7 vs the checkpoint's 1; --norm false vs the checkpoint's"):
        evaluate.main(["--load_ckpt_path", ckpt, "--num_layers", "7", "--norm", "false", "--log_dir", str(tmp_path)])
    with pytest.raises(ConfigError, match="--task lumo disagrees .* trained on homo"):
        evaluate.main(["--load_ckpt_path", ckpt, "--task", "lumo", "--log_dir", str(tmp_path)])

    test = evaluate.main(["--load_ckpt_path", ckpt, "--silent", "--log_dir", str(tmp_path / "t")])
    assert set(test) >= {"test_mae", "test_mae_baseline_mean", "test_loss"} and test["test_size"] == 20

    written = predict.main(["--load_ckpt_path", ckpt, "--split", "val", "--silent", "--log_dir", str(tmp_path / "p")])
    rows = list(csv.DictReader(open(written["output"])))
    assert len(rows) == 27 and all(r["qm9_id"] for r in rows)
    mae = np.mean([abs(float(r["homo_pred"]) - float(r["homo_true"])) for r in rows])
    assert mae == pytest.approx(scores["val_mae"], rel=1e-4)


def test_checkpoints_written_before_the_port_still_evaluate(trained, tmp_path):
    out, result = trained
    state = torch.load(out / "model.pt", weights_only=True)
    legacy = {"format": "molrecipes-checkpoint-v1", "model": state["model"], "optimizer": None, "scheduler": None,
              "precision": None, "epoch": 6, "step": 30,
              "extra": {"model_config": {**state["meta"]["config"], "low_memory": False, "fuse_level": "auto",
                                         "pad_trick": False},
                        "target_scaler": state["extra"]["target_scaler"], "task": "homo", "unit": "eV",
                        "source": "sample", "num_molecules": 200}}
    torch.save(legacy, tmp_path / "v1.pt")
    scores = evaluate.main(["--load_ckpt_path", str(tmp_path / "v1.pt"), "--split", "val", "--silent",
                            "--log_dir", str(tmp_path)])
    assert scores["val_mae"] == pytest.approx(result["val_mae"], rel=1e-6)


def test_benchmark_modes_log_throughput_and_latency(tmp_path, trained):
    bench = ["--benchmark", "--benchmark_warmup", "1", "--benchmark_steps", "2"]
    stats = train.main(train_args(tmp_path / "train", *bench, "--amp", "true", "--low_memory", "true", ckpt=False))
    assert not (tmp_path / "train" / "checkpoint.pt").exists()  # no checkpoint in benchmark mode
    logged = summary(tmp_path / "train")
    assert stats["steps"] == 2 and logged["train_steps"] == 2 and logged["train_throughput"] > 0
    assert {f"train_latency_{s}" for s in ("mean", "p50", "p90", "p95", "p99")} <= set(logged)
    assert logged["peak_memory_mb"] > 0 and "val_mae" not in logged
    for module, name in ((evaluate, "evaluate"), (predict, "predict")):
        module.main(["--load_ckpt_path", str(trained[0] / "model.pt"), "--silent", "--split", "train",
                     "--log_dir", str(tmp_path / name), *bench])
        logged = summary(tmp_path / name, f"{name}_log.json")
        assert logged["inference_steps"] == 2 and logged["inference_throughput"] > 0
        assert "inference_latency_p99" in logged and "train_mae" not in logged


def test_nvidia_command_line_runs(tmp_path):
    """Flags as NVIDIA's scripts spell them (booleans take true/false)."""
    args = ["--amp", "false", "--norm", "true", "--use_layer_norm", "true", "--precompute_bases", "true",
            "--low_memory", "false", "--silent", "true", "--wandb", "false", "--benchmark", "false",
            "--min_learning_rate", "1e-4", "--momentum", "0.9", "--pooling", "avg", "--num_degrees", "2",
            "--num_channels", "8", "--num_layers", "1", "--num_heads", "2", "--channels_div", "2", "--task", "homo",
            "--seed", "42", "--ckpt_interval", "1", "--eval_interval", "1", "--dllogger_name", "dllogger.json",
            "--num_workers", "0", "--gradient_clip", "10", "--accumulate_grad_batches", "2", "--optimizer", "lamb",
            "--epochs", "1", "--batch_size", "8", "--num_molecules", "40", "--learning_rate", "0.002",
            "--weight_decay", "0.1", "--log_dir", str(tmp_path), "--save_ckpt_path", str(tmp_path / "m.pt")]
    result = train.main(args)
    assert result["steps"] == 2 and np.isfinite(result["val_mae"])
    assert summary(tmp_path, "dllogger.json")["stop_reason"] == "epochs"
    assert torch.load(tmp_path / "m.pt", weights_only=True)["meta"]["config"]["pooling"] == "avg"
    # the same command line with --min_lr (NVIDIA's alias) parses to the same value
    parsed = train.build_parser().parse_args(["--min_lr", "1e-4"])
    assert parsed.min_learning_rate == 1e-4


@pytest.mark.parametrize("argv,message", [
    (["--source", "sample"], "--source is not supported: it was renamed --dataset"),
    (["--max_time_min", "5"], "--max_time_min is not supported: it was renamed --max_minutes"),
    (["--config", "small"], "renamed --preset"),
    (["--cuda_graphs", "true"], "--cuda_graphs is not supported by the SE(3)-Transformer"),
    (["--finetune"], "--finetune needs --load_ckpt_path"),
    (["--task", "nope"], "invalid choice: 'nope'"),
    (["--amp", "maybe"], "expected true or false"),
])
def test_bad_flags_give_one_error_line_and_exit_code_2(argv, message, capsys, tmp_path):
    assert run_main(train.main, argv + ["--log_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_evaluate_and_predict_errors(capsys, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    for module in (evaluate, predict):
        assert run_main(module.main, ["--load_ckpt_path", str(bad), "--log_dir", str(tmp_path)]) == 2
        assert "corrupt or truncated" in capsys.readouterr().err
        assert run_main(module.main, ["--log_dir", str(tmp_path)]) == 2
        assert f"checkpoint not found: {tmp_path / 'checkpoint.pt'}" in capsys.readouterr().err  # LOG_DIR's


def test_tf32_is_left_alone_unless_asked(tmp_path, monkeypatch):
    calls = []
    import runtime.precision

    monkeypatch.setattr(runtime.precision, "set_tf32", calls.append)
    train.main(train_args(tmp_path, "--epochs", "1", "--max_steps", "1", ckpt=False))
    assert calls == []
    train.main(train_args(tmp_path, "--epochs", "1", "--max_steps", "1", "--tf32", "false", ckpt=False))
    assert calls == [False]


def test_low_memory_checkpointing_does_not_save_rng_state(monkeypatch):
    from se3_transformer.model.layers import convolution

    seen = []
    real = convolution.checkpoint

    def spy(*args, **kwargs):
        seen.append(kwargs.get("preserve_rng_state", True))
        return real(*args, **kwargs)

    monkeypatch.setattr(convolution, "checkpoint", spy)
    tiny_model(low_memory=True)(random_batch()).sum().backward()
    assert seen and not any(seen)


def _ddp_run(rank, world_size, out):
    result = train.main(train_args(out, "--epochs", "1", "--eval_interval", "1", "--num_molecules", "60"))
    written = predict.main(["--load_ckpt_path", f"{out}/model.pt", "--split", "train", "--silent",
                            "--log_dir", f"{out}/predict"])
    return {k: result[k] for k in ("val_mae", "train_loss", "val_count")}, written["output"]


@pytest.mark.distributed
def test_ddp_two_processes_agree_and_predict_gathers_every_molecule(tmp_path):
    results = run_distributed(_ddp_run, 2, str(tmp_path))
    (first, output), (second, _) = results
    assert first == pytest.approx(second, rel=1e-6)
    assert first["val_count"] == 8  # 60 molecules -> 46 / 8 / 6: each validation molecule once, no padding
    rows = list(csv.DictReader(open(output)))
    single = predict.main(["--load_ckpt_path", str(tmp_path / "model.pt"), "--split", "train", "--silent",
                           "--log_dir", str(tmp_path / "single")])
    reference = list(csv.DictReader(open(single["output"])))  # the same file for 1 and 2 processes, except
    assert [(r["index"], r["homo_true"]) for r in rows] == [(r["index"], r["homo_true"]) for r in reference]
    assert [float(r["homo_pred"]) for r in rows] == pytest.approx([float(r["homo_pred"]) for r in reference],
                                                                   abs=1e-5)  # batch composition: ~1e-6
    assert len(rows) == 46


@pytest.mark.cuda
def test_cuda_amp_training_and_evaluation_run(tmp_path):
    result = train.main(train_args(tmp_path, "--epochs", "2", "--amp", "true", "--num_workers", "2",
                                   "--precompute_bases", "true"))
    assert np.isfinite(result["val_mae"]) and result["steps"] == 8
    scores = evaluate.main(["--load_ckpt_path", str(tmp_path / "model.pt"), "--split", "val", "--silent",
                            "--amp", "true", "--log_dir", str(tmp_path / "e")])
    assert scores["val_mae"] == pytest.approx(result["val_mae"], rel=1e-3)
