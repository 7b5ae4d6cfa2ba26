"""One rank raises a user error while its peer goes on: every entry point of every recipe must print the
``error:`` line and end every rank promptly (2 gloo ranks under torchrun, ``--dist_timeout 5``).

The failing rank raises at the ``logger`` fault point (``MOLRECIPES_RAISE_AT=logger:1``), which every
entry point reaches after the process group is up, inside its ``try``/``finally``. The old teardown
ran a barrier from ``finally`` there and waited for a peer that sat in another collective: a hang
until ``--dist_timeout``, and only a timeout message. The time bound below is far under 5 minutes
and covers two processes starting on a loaded 2-core machine.
"""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime.testing import free_port
from tests.graph_parallel.gp_helpers import tiny_dataset
from tests.graph_parallel.gp_helpers import train_args as gp_train_args
from tests.test_device_faults import MOFLOW_TINY, SE3_TINY

ROOT = Path(__file__).resolve().parents[1]
BOUND_S = 150


def launch(module: str, args: list, tmp: Path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), MOLRECIPES_RAISE_AT="logger:1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", module, *[str(a) for a in args], "--dist_timeout", "5"]
    started = time.time()
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=BOUND_S + 60)
    return proc, time.time() - started


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny trained checkpoint of each recipe (single process)."""
    from graph_parallel import train as gp_train
    from moflow import preprocess
    from moflow import train as mf_train
    from se3_transformer import train as se3_train

    tmp = tmp_path_factory.mktemp("ranks")
    mf_data = tmp / "mf_data"
    preprocess.main(["--dataset", "sample", "--data_dir", str(mf_data), "--max_molecules", "300", "--max_atoms", "18",
                     "--max_nodes", "18", "--valid_fraction", "0.3"])
    mf_train.main(["--data_dir", str(mf_data), "--log_dir", str(tmp / "mf"), "--batch_size", "8", "--max_steps", "1",
                   "--val_samples", "4", *MOFLOW_TINY])
    se3_train.main(SE3_TINY + ["--batch_size", "8", "--log_dir", str(tmp / "se3"), "--save_ckpt_path",
                               str(tmp / "se3" / "model.pt"), "--max_steps", "1"])
    gp_data = tiny_dataset(tmp / "gp_data")
    gp_train.main(gp_train_args(gp_data, tmp / "gp", "--max_steps", "1", "--num_workers", "0"))
    return {"mf_data": mf_data, "mf": tmp / "mf" / "moflow.pt", "se3": tmp / "se3" / "model.pt",
            "gp_data": gp_data, "gp": tmp / "gp" / "model.pt"}


def entry_points(c, out):
    mf_eval = ["--load_ckpt_path", c["mf"], "--log_dir", out, "--silent", "--num_samples", "4"]
    se3_eval = ["--load_ckpt_path", c["se3"], "--log_dir", out, "--silent", "--num_workers", "0"]
    gp_eval = ["--load_ckpt_path", c["gp"], "--dataset", c["gp_data"], "--log_dir", out, "--silent", "--num_workers", "0"]
    return {
        "moflow.train": ["--data_dir", c["mf_data"], "--log_dir", out, "--batch_size", "8", "--max_steps", "2",
                         "--val_samples", "4", *MOFLOW_TINY],
        "moflow.evaluate": mf_eval + ["--num_molecules", "8"],
        "moflow.predict": mf_eval + ["--output", Path(out) / "m.smi"],
        "se3_transformer.train": SE3_TINY + ["--batch_size", "8", "--log_dir", out, "--max_steps", "2"],
        "se3_transformer.evaluate": se3_eval,
        "se3_transformer.predict": se3_eval,
        "graph_parallel.train": gp_train_args(c["gp_data"], out, "--max_steps", "2", "--num_workers", "0"),
        "graph_parallel.evaluate": gp_eval,
        "graph_parallel.predict": gp_eval,
    }


@pytest.mark.distributed
@pytest.mark.parametrize("module", ["moflow.train", "moflow.evaluate", "moflow.predict", "se3_transformer.train",
                                    "se3_transformer.evaluate", "se3_transformer.predict", "graph_parallel.train",
                                    "graph_parallel.evaluate", "graph_parallel.predict"])
def test_one_rank_raising_ends_every_rank_with_its_error_line(module, checkpoints, tmp_path):
    proc, seconds = launch(module, entry_points(checkpoints, tmp_path / "out")[module], tmp_path)
    assert proc.returncode != 0
    assert "error: injected failure at logger (MOLRECIPES_RAISE_AT) (rank 1 of 2)" in proc.stderr, proc.stderr[-3000:]
    assert seconds < BOUND_S, f"{module} took {seconds:.0f} s to end after one rank failed"
