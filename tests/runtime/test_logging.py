"""DLLogger-format JSON lines: every record parses and carries the documented keys."""
import json
import math

from runtime.logging import PREFIX, read_dllogger, setup_logger


def test_dllogger_lines_parse_with_documented_keys(tmp_path, capsys):
    logger = setup_logger(str(tmp_path), silent=False)
    logger.log_metadata("loss", {"unit": None, "format": ":.4f"})
    logger.log_params({"lr": 1e-3, "model": "tiny"})
    logger.log((0, 10), {"loss": 0.123456, "lr": 1e-3})
    logger.log(7, {"nan_metric": math.nan})
    logger.log((), {"throughput": 12.5})
    logger.close()

    lines = (tmp_path / "log.json").read_text().splitlines()
    assert lines and all(line.startswith(PREFIX) for line in lines)
    records = [json.loads(line[len(PREFIX):]) for line in lines]
    assert records == read_dllogger(str(tmp_path / "log.json"))
    for r in records:
        assert {"timestamp", "datetime", "elapsedtime", "type"} <= set(r)
        float(r["timestamp"])
        assert r["type"] in ("LOG", "METADATA")
    meta = [r for r in records if r["type"] == "METADATA"]
    assert meta == [dict(meta[0], metric="loss", metadata={"unit": None, "format": ":.4f"})]
    logs = [r for r in records if r["type"] == "LOG"]
    assert logs[0]["step"] == "PARAMETER" and logs[0]["data"]["model"] == "tiny"
    assert logs[1]["step"] == [0, 10] and logs[1]["data"] == {"loss": 0.123456, "lr": 1e-3}
    assert logs[2]["step"] == [7] and logs[2]["data"]["nan_metric"] == "nan"
    assert logs[3]["step"] == [] and logs[3]["data"]["throughput"] == 12.5
    out = capsys.readouterr().out
    assert "epoch: 0 iter: 10" in out and "loss: 0.1235" in out


def test_silent_logger_drops_per_step_lines_but_writes_file(tmp_path, capsys):
    logger = setup_logger(str(tmp_path), silent=True)
    logger.log((0, 1), {"loss": 1.0})
    logger.log((0,), {"val_loss": 2.0})
    logger.close()
    out = capsys.readouterr().out
    assert "loss: 1" not in out and "val_loss: 2" in out
    assert len(read_dllogger(str(tmp_path / "log.json"))) == 2


def test_vocabulary_declares_units_and_refuses_unknown_names(tmp_path):
    import pytest

    logger = setup_logger(str(tmp_path), silent=True, stdout=False, recipe="graph_parallel")
    logger.log((0, 1), {"train_loss": 1.0, "lr": 1e-3})
    logger.log((0,), {"val_energy_mae": 0.5, "val_energy_mae_baseline_mean": 1.0, "train_throughput": 3.0})
    with pytest.raises(KeyError, match="not in the graph_parallel vocabulary"):
        logger.log((0,), {"epoch_train_loss": 1.0})
    logger.close()
    meta = {r["metric"]: r["metadata"] for r in read_dllogger(str(tmp_path / "log.json")) if r["type"] == "METADATA"}
    assert meta["val_energy_mae"]["unit"] == "eV" and meta["val_energy_mae_baseline_mean"]["unit"] == "eV"
    assert meta["train_throughput"]["unit"] == "structures/s" and set(meta) >= {"train_loss", "lr"}


def test_new_run_sets_old_log_aside_and_resumed_run_appends(tmp_path):
    first = setup_logger(str(tmp_path), silent=True, stdout=False)
    first.log(1, {"loss": 1.0})
    first.close()
    resumed = setup_logger(str(tmp_path), silent=True, stdout=False, append=True)
    resumed.log(2, {"loss": 0.5})
    resumed.close()
    assert len(read_dllogger(str(tmp_path / "log.json"))) == 2
    fresh = setup_logger(str(tmp_path), silent=True, stdout=False)
    fresh.log(1, {"loss": 3.0})
    fresh.close()
    assert len(read_dllogger(str(tmp_path / "log.json"))) == 1
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("log.") and p.name != "log.json"]
    assert len(aside) == 1 and len(read_dllogger(str(aside[0]))) == 2


def test_wandb_backend_runs_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = setup_logger(str(tmp_path), wandb=True, silent=True, run_name="test")
    logger.log_params({"lr": 0.1})
    logger.log(1, {"loss": 2.0})
    logger.close()
    assert (tmp_path / "wandb").is_dir()


def test_tensorboard_backend_writes_events(tmp_path):
    logger = setup_logger(str(tmp_path), tensorboard=True, silent=True)
    logger.log(3, {"loss": 0.5})
    logger.close()
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tensorboard").iterdir())
