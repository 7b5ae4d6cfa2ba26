"""Shared by the graph_parallel training tests: a tiny dataset directory, flags, log and checkpoint readers."""
import os
import subprocess
import sys
from pathlib import Path

import torch

from graph_parallel.data import EMBEDDED_DATA_DIR, LmdbDataset, write_lmdb
from runtime.logging import read_dllogger
from runtime.testing import free_port

ROOT = Path(__file__).resolve().parents[2]
# 16 training frames of 16 different systems (4 batches of 4), 4 validation frames of 4 systems
TRAIN_FRAMES = list(range(0, 144, 9))
VAL_FRAMES = [0, 9, 18, 27]


def tiny_dataset(directory: Path, train=TRAIN_FRAMES, val=VAL_FRAMES, val_source: str = "val") -> Path:
    """``directory`` with train.lmdb and val.lmdb cut from the embedded set (val frames from ``val_source``)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, picks, source_name in (("train", train, "train"), ("val", val, val_source)):
        source = LmdbDataset(EMBEDDED_DATA_DIR / f"{source_name}.lmdb")
        write_lmdb(directory / f"{name}.lmdb", [source.raw(i) for i in picks])
    return directory


def train_args(data: Path, out: Path, *extra) -> list:
    """Small, fast settings: small preset, short cutoff, batch 4, a log line per step."""
    return [str(a) for a in ("--dataset", data, "--preset", "small", "--cutoff", "4.5", "--max_neighbors", "20",
                             "--batch_size", "4", "--silent", "--log_dir", out, "--save_ckpt_path", out / "model.pt",
                             "--warmup_steps", "2", "--log_interval", "1", "--fit_scale_batches", "2",
                             "--learning_rate", "3e-3", *extra)]


def records(log_dir: Path, name: str = "log.json"):
    return [r for r in read_dllogger(str(Path(log_dir) / name)) if r.get("type") == "LOG"]


def step_losses(log_dir: Path) -> dict:
    """optimizer step -> logged train_loss (later records win, as after a resume)."""
    return {r["step"][1]: r["data"]["train_loss"] for r in records(log_dir)
            if isinstance(r["step"], list) and len(r["step"]) == 2}


def epoch_records(log_dir: Path) -> dict:
    """epoch -> the last per-epoch record's data."""
    return {r["step"][0]: r["data"] for r in records(log_dir) if isinstance(r["step"], list) and len(r["step"]) == 1}


def checkpoint_tensors(path: Path) -> dict:
    """The model's and the EMA's tensors of a checkpoint, by name."""
    state = torch.load(path, weights_only=True)
    out = {f"model.{k}": v for k, v in state["model"].items()}
    out.update({f"ema.{k}": v for k, v in (state["extra"].get("ema") or {}).items()})
    return out


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def torchrun(module: str, args, nproc: int = 2, timeout: int = 300, check: bool = True):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
           str(free_port()), "-m", module] + [str(a) for a in args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc
