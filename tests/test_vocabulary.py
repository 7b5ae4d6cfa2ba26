"""One vocabulary: a tiny train -> evaluate -> predict of every recipe logs only names from
runtime/vocabulary.py, each with a METADATA record (unit, format), and runtime.plot draws the logs."""
import glob
import os

import numpy as np
import pytest
from PIL import Image

from runtime import vocabulary
from runtime.logging import read_dllogger
from runtime.plot import main as plot_main
from tests.graph_parallel.gp_helpers import tiny_dataset
from tests.se3_transformer.helpers import TINY as SE3_TINY

MOFLOW_TINY = ["--b_n_flow", "2", "--b_hidden_ch", "16", "--b_n_squeeze", "6", "--b_conv_lu", "1", "--a_n_flow", "4",
               "--a_hidden_gnn", "8", "--a_hidden_lin", "8", "--batch_size", "16", "--silent"]


def _moflow(tmp_path):
    from moflow import evaluate, predict, preprocess, train

    data, out = str(tmp_path / "data"), str(tmp_path / "moflow")
    preprocess.main(["--dataset", "sample", "--data_dir", data, "--max_molecules", "400", "--max_atoms", "18",
                     "--max_nodes", "18", "--valid_fraction", "0.2"])
    train.main(["--data_dir", data, "--log_dir", out, "--epochs", "2", "--log_interval", "1", "--val_samples", "8",
                "--val_molecules", "8", *MOFLOW_TINY])
    evaluate.main(["--load_ckpt_path", f"{out}/checkpoint.pt", "--log_dir", out, "--num_samples", "8",
                   "--num_molecules", "8", "--output", f"{out}/metrics.json"])
    predict.main(["--load_ckpt_path", f"{out}/checkpoint.pt", "--log_dir", out, "--num_samples", "8",
                  "--output", f"{out}/mols.smi", "--png", ""])
    return out


def _se3(tmp_path):
    from se3_transformer import evaluate, predict, train

    out = str(tmp_path / "se3")
    train.main([*SE3_TINY, "--log_dir", out, "--save_ckpt_path", f"{out}/model.pt", "--epochs", "2",
                "--log_interval", "1", "--eval_interval", "1"])
    evaluate.main(["--load_ckpt_path", f"{out}/model.pt", "--log_dir", out, "--split", "val", "--silent"])
    predict.main(["--load_ckpt_path", f"{out}/model.pt", "--log_dir", out, "--split", "val", "--silent"])
    return out


def _graph_parallel(tmp_path):
    from graph_parallel import evaluate, predict, train

    data, out = tiny_dataset(tmp_path / "gp_data"), str(tmp_path / "gp")
    common = ["--preset", "small", "--cutoff", "4.5", "--max_neighbors", "20", "--batch_size", "4", "--silent"]
    train.main(["--dataset", str(data), *common, "--log_dir", out, "--epochs", "1", "--log_interval", "1",
                "--warmup_steps", "2"])
    evaluate.main(["--load_ckpt_path", f"{out}/checkpoint.pt", "--dataset", str(data), "--split", "val",
                   "--log_dir", out, "--silent"])
    predict.main(["--load_ckpt_path", f"{out}/checkpoint.pt", "--dataset", str(data), "--split", "val",
                  "--output", f"{out}/pred.npz", "--log_dir", out, "--silent"])
    return out


@pytest.mark.parametrize("recipe, run", [("moflow", _moflow), ("se3_transformer", _se3),
                                         ("graph_parallel", _graph_parallel)])
def test_every_logged_metric_is_in_the_vocabulary_with_metadata(tmp_path, recipe, run):
    out = run(tmp_path)
    logs = sorted(glob.glob(os.path.join(out, "*log.json")))
    assert {os.path.basename(p) for p in logs} >= {"log.json", "evaluate_log.json", "predict_log.json"}
    for path in logs:
        records = read_dllogger(path)
        declared = {r["metric"] for r in records if r["type"] == "METADATA"}
        names = {k for r in records if r["type"] == "LOG" and r.get("step") != "PARAMETER" for k in r["data"]}
        assert names, path
        unknown = sorted(n for n in names if not vocabulary.is_known(recipe, n))
        assert not unknown, f"{path}: names outside the {recipe} vocabulary: {unknown}"
        assert names <= declared, f"{path}: metrics without METADATA: {sorted(names - declared)}"
        assert all(n == n.lower() and " " not in n for n in names)
    train_names = {k for r in read_dllogger(os.path.join(out, "log.json")) if r["type"] == "LOG" for k in r["data"]}
    assert {"train_loss", "lr", "train_throughput"} <= train_names and "val_loss" in train_names

    png = os.path.join(out, "curves.png")
    assert plot_main([out, "--output", png]) == 0
    image = np.asarray(Image.open(png).convert("L"), dtype=float)
    assert image.std() > 5 and (image < 128).mean() > 0.005  # curves and text, not a blank canvas
