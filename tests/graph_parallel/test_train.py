"""Training: a short run lowers the loss; torchrun gp_size=2 CLI run, resume and evaluation; bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import Subset

from graph_parallel.data import EMBEDDED_DATA_DIR, LmdbDataset
from graph_parallel.models import fit_scale_factors
from graph_parallel.train import Trainer, build_parser, energy_normalizer, main, make_loader
from runtime.distributed import ProcessGrid
from runtime.logging import read_dllogger, setup_logger
from runtime.testing import free_port

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--preset", "small", "--cutoff", "4.5", "--max_neighbors", "20", "--batch_size", "4", "--silent"]


@pytest.mark.parametrize("model", ["dimenetpp", "gemnet_t", "gemnet_dt"])
def test_short_training_lowers_loss(model, tmp_path):
    args = build_parser().parse_args(SMALL + ["--model", model, "--warmup_steps", "0", "--learning_rate", "3e-3",
                                              "--ema_decay", "0", "--gradient_clip", "100"])
    data = LmdbDataset(EMBEDDED_DATA_DIR / "train.lmdb")
    subset = Subset(data, list(range(0, 48, 6)))
    trainer = Trainer(args, ProcessGrid(1), torch.device("cpu"), setup_logger(None, silent=True),
                      energy_normalizer(data))
    loader = make_loader(subset, args, trainer.grid, train=True)
    if model.startswith("gemnet"):
        fit_scale_factors(trainer.model, [b for b in loader])
    before = trainer.evaluate(loader)["loss"]
    for _ in range(12):
        for batch in loader:
            trainer.train_step(batch)
    after = trainer.evaluate(loader)["loss"]
    assert after < 0.7 * before, (before, after)


def torchrun(args, nproc=2, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
           str(free_port()), "-m", "graph_parallel.train"] + args
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.distributed
def test_torchrun_gp2_train_resume_evaluate(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    common = SMALL + ["--gp_size", "2", "--log_dir", str(tmp_path), "--save_ckpt_path", str(ckpt)]
    torchrun(common + ["--epochs", "1", "--max_steps", "3"])
    state = torch.load(ckpt, weights_only=False)
    assert state["position"]["step"] == 3 and state["position"]["epoch"] == 0 and state["extra"]["ema"] is not None
    torchrun(common + ["--epochs", "2", "--max_steps", "5", "--load_ckpt_path", str(ckpt)])
    state = torch.load(ckpt, weights_only=False)
    assert state["position"]["step"] == 5 and state["position"]["epoch"] == 1
    records = read_dllogger(str(tmp_path / "log.json"))
    epochs = [r["step"] for r in records if r.get("type") == "LOG" and isinstance(r.get("step"), list)
              and len(r["step"]) == 1]
    assert [0] in epochs and [1] in epochs
    val = [r["data"] for r in records if isinstance(r.get("step"), list) and r["step"] == [1]][-1]
    for key in ("val_energy_mae", "val_forces_mae", "val_forces_cos", "val_efwt"):
        assert key in val and val[key] == val[key]
    torchrun(SMALL + ["--gp_size", "2", "--evaluate", "--load_ckpt_path", str(ckpt), "--log_dir",
                      str(tmp_path / "eval")])
    summary = [r["data"] for r in read_dllogger(str(tmp_path / "eval" / "log.json")) if r.get("step") == []]
    assert summary and 0 <= summary[-1]["val_efwt"] <= 1 and summary[-1]["val_energy_mae"] > 0


def test_bad_input_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        main(SMALL + ["--data_dir", str(tmp_path / "missing"), "--log_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="gp_size"):
        main(SMALL + ["--gp_size", "3", "--log_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="--compile"):
        main(SMALL + ["--compile", "--log_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="unknown preset"):
        main(["--preset", "huge", "--log_dir", str(tmp_path), "--silent"])
